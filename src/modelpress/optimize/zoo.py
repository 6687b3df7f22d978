"""Model intake: registered factories only (never unpickled user code), plus safe weight loading.

A model is named by a registered entry point (group ``modelpress.models``) or by
``package.module:attr`` whose module is inside ``Settings.factory_allowlist``. The name resolves to a
``ModelSpec``: how to build the architecture, the task data (held-out eval, calibration, train), the
metric, and how to make inputs for latency. Weights come from ``.safetensors`` or a ``torch.save``
file read with ``weights_only=True``.

Example:
    >>> spec = resolve_model("mlp")
    >>> spec.metric
    'top1_agreement'
"""

from __future__ import annotations

import hashlib
import importlib
import math
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torch import nn

from modelpress.optimize.errors import ModelLoadError, UnknownModelError

Metric = Literal["accuracy", "top1_agreement", "cosine"]
Inputs = torch.Tensor | tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class TaskData:
    """Held-out evaluation data, calibration inputs and (optionally) training data.

    ``eval_labels`` is None for models judged by fidelity to the float model.
    """

    eval_inputs: Inputs
    eval_labels: torch.Tensor | None
    calib_inputs: Inputs
    train_inputs: Inputs | None = None
    train_labels: torch.Tensor | None = None
    description: str = ""
    # Validation rows (disjoint from eval): choices such as layers kept float are made here when present.
    val_inputs: Inputs | None = None
    val_labels: torch.Tensor | None = None


@dataclass(frozen=True)
class ModelSpec:
    """Everything the pipeline needs to know about one registered model."""

    name: str
    version: int
    build: Callable[[], nn.Module]
    data: Callable[[], TaskData]
    metric: Metric
    make_input: Callable[[int], Inputs]
    latency_batches: tuple[int, ...] = (1, 64)
    # Fills a freshly built model with the built-in weights (seeded init or a short deterministic
    # training run), given a cache dir; None means the user must supply weights.
    pretrained: Callable[[nn.Module, Path | None], None] | None = None
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def builtin_id(self) -> str:
        return f"builtin:{self.name}:v{self.version}"


# ----------------------------------------------------------------------------- resolution
def _entry_point_specs() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group="modelpress.models")}


def registered_models() -> list[str]:
    """Names of the installed, registered model factories."""
    return sorted(_entry_point_specs())


def resolve_model(name: str, *, allowlist: tuple[str, ...] = ()) -> ModelSpec:
    """Turn a model name into its ``ModelSpec``, refusing anything not registered or allow-listed."""
    eps = _entry_point_specs()
    if name in eps:
        obj = eps[name].load()
    elif ":" in name:
        module, _, attr = name.partition(":")
        if not any(module == p or module.startswith(p + ".") for p in allowlist):
            raise UnknownModelError(
                f"model factory {name!r} is not allowed: its module is outside MODELPRESS_FACTORY_ALLOWLIST "
                f"({', '.join(allowlist) or 'empty'})"
            )
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise UnknownModelError(f"model factory {name!r} could not be imported: {e}") from None
    else:
        raise UnknownModelError(f"unknown model {name!r}; registered models: {', '.join(sorted(eps))}")
    spec = obj() if callable(obj) and not isinstance(obj, ModelSpec) else obj
    if not isinstance(spec, ModelSpec):
        raise UnknownModelError(f"model factory {name!r} did not give a ModelSpec (got {type(spec).__name__})")
    return spec


# ----------------------------------------------------------------------------- weights
def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_state_dict(path: str | os.PathLike[str], *, max_bytes: int) -> dict[str, torch.Tensor]:
    """Read a state dict without unpickling code: safetensors, or ``torch.load(weights_only=True)``."""
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"weights file {p} does not exist")
    size = p.stat().st_size
    if size > max_bytes:
        raise ModelLoadError(f"weights file {p.name} is {size} bytes, over the limit of {max_bytes} bytes")
    is_safetensors = p.suffix.lower() == ".safetensors"
    if not is_safetensors:
        _check_zip_unpacked_size(p, max_bytes)
    try:
        if is_safetensors:
            from safetensors.torch import load_file

            sd: Any = load_file(str(p), device="cpu")
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every reader error means "this file is not usable weights"
        # ...except Celery's soft time limit (billiard raises it inside whatever runs): it must reach the task.
        if type(e).__module__.startswith(("billiard", "celery")):
            raise
        first_line = (str(e).splitlines() or [""])[0][:300]
        raise ModelLoadError(
            f"weights file {p.name} could not be read safely ({type(e).__name__}: {first_line}); "
            "save it with safetensors or torch.save(model.state_dict())"
        ) from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelLoadError(f"weights file {p.name} does not hold a state dict of tensors")
    odd = [str(k)[:60] for k, v in sd.items()
           if not isinstance(k, str) or v.layout != torch.strided or v.device.type != "cpu"]
    if odd:
        raise ModelLoadError(f"weights file {p.name} holds entries that are not named dense CPU tensors: "
                             f"{', '.join(odd[:5])}")
    return sd


def _check_zip_unpacked_size(p: Path, max_bytes: int) -> None:
    # torch.save files are zips; a compressed member could unpack to far more than the file's size
    # (a zip bomb), so the limit applies to what the directory says it unpacks to, before torch reads it.
    import zipfile

    if not zipfile.is_zipfile(p):
        return
    try:
        with zipfile.ZipFile(p) as zf:
            unpacked = sum(i.file_size for i in zf.infolist())
    except (zipfile.BadZipFile, OSError, EOFError):
        return  # torch.load reports the damage in its own words below
    if unpacked > max_bytes:
        raise ModelLoadError(f"weights file {p.name} unpacks to {unpacked} bytes, over the limit of {max_bytes} bytes")


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load a state dict strictly, with an error a person can act on; refuse NaN/Inf."""
    bad = [k for k, v in state_dict.items()
           if (v.is_floating_point() or v.is_complex()) and not torch.isfinite(v).all()]
    if bad:
        raise ModelLoadError(f"weights contain NaN or Inf in {', '.join(bad[:5])}")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        msg = " ".join(str(e).split())
        raise ModelLoadError(f"weights do not fit the architecture: {msg[:600]}") from None


def materialize(spec: ModelSpec, *, weights: str | None, max_bytes: int, cache_dir: Path | None) -> tuple[nn.Module, str]:
    """Build the float model with its weights; returns (model in eval mode, content id).

    The content id is the sha256 of the weights file, or the built-in id for built-in weights.
    """
    model = spec.build()
    if weights is not None:
        load_weights(model, read_state_dict(weights, max_bytes=max_bytes))
        content = file_sha256(weights)
    elif spec.pretrained is not None:
        spec.pretrained(model, cache_dir)
        content = hashlib.sha256(spec.builtin_id.encode()).hexdigest()
    else:
        raise ModelLoadError(f"model {spec.name!r} has no built-in weights: give a weights file")
    return model.eval(), content


# ----------------------------------------------------------------------------- the built-in zoo
class SeedMLP(nn.Module):
    """The seed project's MLP: 512 → 1024 → 100."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(512, 1024)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(1024, 100)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(x)))


def _randn(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def _mlp_data() -> TaskData:
    # No labels exist for a random MLP: the metric is top-1 agreement with the float model on
    # fixed random inputs (eval and calibration drawn from different seeds).
    return TaskData(
        eval_inputs=_randn((2048, 512), 1),
        eval_labels=None,
        calib_inputs=_randn((256, 512), 2),
        train_inputs=_randn((2048, 512), 3),
        description="fixed N(0,1) inputs, seeds 1 (eval) / 2 (calibration)",
    )


def _mlp_pretrained(model: nn.Module, cache_dir: Path | None) -> None:
    torch.manual_seed(0)
    fresh = SeedMLP()
    model.load_state_dict(fresh.state_dict())


def mlp_spec() -> ModelSpec:
    return ModelSpec(
        name="mlp",
        version=1,
        build=SeedMLP,
        data=_mlp_data,
        metric="top1_agreement",
        make_input=lambda b: _randn((b, 512), 100 + b),
        latency_batches=(1, 64),
        pretrained=_mlp_pretrained,
        description="seed MLP 512-1024-100, seeded init",
    )


class DigitsCNN(nn.Module):
    """Small CNN for 8×8 digits: 3 conv-bn-relu blocks, max-pool, 2 linear layers (~357k params)."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3 = (max(1, round(c * width)) for c in (32, 64, 128))
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(),
            nn.Conv2d(c2, c3, 3, padding=1, bias=False), nn.BatchNorm2d(c3), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c3 * 16, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)  # bundled with scikit-learn: no download
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    def t(a: Any) -> torch.Tensor:
        return torch.tensor(a / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    return t(xtr), torch.tensor(ytr), t(xte), torch.tensor(yte)


def _digits_data() -> TaskData:
    xtr, ytr, xte, yte = _digits_split()
    return TaskData(
        eval_inputs=xte, eval_labels=yte, calib_inputs=xtr[:256], train_inputs=xtr, train_labels=ytr,
        description="scikit-learn load_digits, stratified 80/20 split (random_state=0), 360 held out",
    )


def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, seed: int,
                     lr: float = 1e-3, batch_size: int = 64) -> nn.Module:
    """Deterministic small-data training loop (Adam, cross-entropy); returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def _digits_pretrained(model: nn.Module, cache_dir: Path | None) -> None:
    # Training takes seconds; cache the result so every job of a batch starts from identical bytes.
    cache = cache_dir / "builtin-digits_cnn-v1.safetensors" if cache_dir else None
    if cache is not None and cache.is_file():
        load_weights(model, read_state_dict(cache, max_bytes=1 << 30))
        return
    # Seeded initial weights too (not only the training loop): otherwise the built-in weights would
    # depend on whatever the process drew from the global RNG before, under one and the same id.
    torch.manual_seed(0)
    model.load_state_dict(type(model)().state_dict())
    xtr, ytr, _, _ = _digits_split()
    train_classifier(model, xtr, ytr, epochs=15, seed=0)
    if cache is not None:
        from safetensors.torch import save_file

        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        os.replace(tmp, cache)


def digits_cnn_spec() -> ModelSpec:
    return ModelSpec(
        name="digits_cnn",
        version=1,
        build=DigitsCNN,
        data=_digits_data,
        metric="accuracy",
        make_input=lambda b: _randn((b, 1, 8, 8), 200 + b).clamp(0, 1),
        latency_batches=(1, 64),
        pretrained=_digits_pretrained,
        description="CNN on scikit-learn digits (8x8), trained 15 epochs, seed 0",
    )


def is_finite_number(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
