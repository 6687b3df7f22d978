# One image for every modelpress service (migrate, workers, ops-worker, beat, flower): the compose file
# picks the command. Build: docker compose build (worker-qnnpack builds for linux/arm64; on an x86
# host that needs QEMU/binfmt, or build it on an ARM machine).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MODELPRESS_HOME=/data/home \
    MODELPRESS_ARTIFACT_STORE=/data/artifacts \
    MODELPRESS_MIGRATIONS_DIR=/app/migrations

WORKDIR /app

# torch first, in its own layer (it is most of the image and changes least). torch==2.13.0 exactly, as in
# pyproject.toml. On a normal machine the CPU-only wheel comes from PyTorch's CPU index
# (--extra-index-url https://download.pytorch.org/whl/cpu); PyPI's default torch wheel for
# linux/amd64 pulls CUDA libraries (GBs) these CPU workers never use. On linux/arm64 the same index
# serves the CPU wheel, so both worker platforms build from this one file.
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"

COPY pyproject.toml README.md ./
COPY src ./src
COPY migrations ./migrations
# A regular (non-editable) install: the package and its entry points (models, the `modelpress` command).
# The extra index again, so the resolver sees the torch it already has and never swaps it for a CUDA build.
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu . \
    && python -c "import torch, modelpress; assert torch.__version__.startswith('2.13.0'), torch.__version__"

# Not root: a job runs model code (registered factories) on untrusted weights' shapes.
RUN useradd --create-home --uid 10001 modelpress \
    && mkdir -p /data/home /data/artifacts \
    && chown -R modelpress /data
USER modelpress

CMD ["modelpress", "--help"]
