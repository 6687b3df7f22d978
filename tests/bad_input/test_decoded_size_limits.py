"""Files small on disk that decode huge are refused by the decoded-size limits, at submit and on a real worker.

Every file here is kilobytes on disk and under the byte limits (``MODELPRESS_MAX_WEIGHTS_BYTES``), yet
would decode to gigabytes: 1,000 one-pixel PNGs cropped to 1024 or 4096, a 100,000x1 panorama, an
image just over the pixel limit, a safetensors header declaring 10^10 elements, text padded to
``max_length`` 65536 or over 16M tokens, latency batches of a few 4 MiB rows repeated.

``modelpress submit`` (a real CLI process) refuses each with exit 2 and one line naming the limit, in
under 20 s and 4 GB; the same inputs put past submit (``producer.validate(..., ref=...)``, as another
producer or an older client could) fail on the real worker with the limit named, once, and the worker
then runs a good job.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.bad_input.test_refused_at_submit import QUICK
from tests.faults.record import record

CLI_SECONDS = 20
CLI_PEAK_KB = 4 * 1024 * 1024


def _peak_rss_kb_of_worker(pid: int) -> int:
    """The largest resident high-water mark (VmHWM) of a worker process and its children (the prefork pool)."""
    def parent(p: Path) -> int:
        try:
            return int(p.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return -1

    peaks = []
    for p in [Path(f"/proc/{pid}"), *(q for q in Path("/proc").iterdir() if q.name.isdigit() and parent(q) == pid)]:
        try:
            status = p.joinpath("status").read_text()
        except OSError:
            continue
        peaks += [int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")]
    return max(peaks)


@dataclass(frozen=True)
class Bombs:
    """Paths of the small files that decode huge, and of the small real models they go with."""

    weights: Path       # torchvision mobilenet_v3_small, 4 classes (real, loadable)
    pngs: Path          # 1,000 one-pixel PNGs
    panorama: Path      # one 100,000x1 PNG
    big_image: Path     # one 8000x8001 PNG: 64,008,000 pixels, just over the 64,000,000 limit
    hf: Path            # a tiny BERT classifier with 4,096 positions and its tokenizer
    texts: Path         # 4,097 JSONL rows: x 4,096 tokens is just over 16M
    short_texts: Path   # 8 JSONL rows
    pt2: Path           # a .pt2 whose input rows are 1M floats (4 MiB)
    huge_header: Path   # safetensors whose header declares a 100,000 x 100,000 tensor
    wide_rows: Path     # 6 rows of 4 MiB, 25 KB compressed (.npz)


def _tiny_bert(folder: Path) -> Path:
    from modelpress.optimize.sources.vision import import_torchvision

    import_torchvision()  # transformers imports torchvision; the registry's build needs the shim
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True, model_max_length=4096)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=8, max_position_embeddings=4096, num_labels=2)
    BertForSequenceClassification(cfg).eval().save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def _wide_program(path: Path) -> Path:
    import torch

    class MeanOfBlocks(torch.nn.Module):
        """Rows of 1M floats in, 3 logits out: the input is big, the model tiny."""

        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(1024, 3)

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return self.fc(features.reshape(features.shape[0], -1, 1024).mean(1))

    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(MeanOfBlocks().eval(), (torch.zeros(2, 1024**2),),
                                  dynamic_shapes={"features": {0: batch}})
    torch.export.save(program, str(path))
    return path


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> Bombs:
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from modelpress.optimize.sources.vision import import_torchvision

    root = tmp_path_factory.mktemp("bombs")
    torch.manual_seed(0)
    model = import_torchvision().models.mobilenet_v3_small(num_classes=4)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "mobilenet.safetensors"))
    (root / "pngs").mkdir()
    for i in range(1000):
        Image.new("RGB", (1, 1), (i % 256, 0, 0)).save(root / "pngs" / f"{i:04d}.png")
    for name, size in (("panorama", (100_000, 1)), ("big-image", (8000, 8001))):
        (root / name).mkdir()
        Image.new("L", size).save(root / name / f"{name}.png")
    hf = _tiny_bert(root / "tiny-bert")
    (root / "texts.jsonl").write_text('{"text": "a b", "label": 1}\n' * 4097)
    (root / "short.jsonl").write_text('{"text": "a b", "label": 0}\n' * 8)
    header = json.dumps({"features": {"dtype": "F32", "shape": [100_000, 100_000], "data_offsets": [0, 4 * 10**10]}})
    (root / "huge-header.safetensors").write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * 64)
    np.savez_compressed(root / "wide-rows.npz", features=np.zeros((6, 1024**2), np.float32))
    return Bombs(weights=root / "mobilenet.safetensors", pngs=root / "pngs", panorama=root / "panorama",
                 big_image=root / "big-image", hf=hf, texts=root / "texts.jsonl", short_texts=root / "short.jsonl",
                 pt2=_wide_program(root / "wide.pt2"), huge_header=root / "huge-header.safetensors",
                 wide_rows=root / "wide-rows.npz")


def _vision(b: Bombs, folder: Path, **extra: object) -> dict:
    return {"model": "torchvision:mobilenet_v3_small", "weights": str(b.weights), "data": {"eval": str(folder)},
            **extra}


# case → (the request, the variable its refusal must name, the limit's value as the message writes it)
CASES = {
    "1,000 one-pixel PNGs cropped to 4096": (
        lambda b: _vision(b, b.pngs, preprocess={"crop": 4096}), "MODELPRESS_MAX_IMAGE_SIDE", "1,024 pixels"),
    "1,000 one-pixel PNGs cropped to 1024 (12.6 GB as floats)": (
        lambda b: _vision(b, b.pngs, preprocess={"crop": 1024}), "MODELPRESS_MAX_IMAGE_DATA_BYTES",
        "2,147,483,648 bytes"),
    "a 100,000x1 panorama resized to 256 (20 GB)": (
        lambda b: _vision(b, b.panorama), "MODELPRESS_MAX_IMAGE_ASPECT", "16:"),
    "an 8000x8001 image, just over the pixel limit": (
        lambda b: _vision(b, b.big_image), "MODELPRESS_MAX_IMAGE_PIXELS", "64,000,000 pixels"),
    "text max_length 65536": (
        lambda b: {"model": f"hf:{b.hf}", "data": {"eval": str(b.short_texts)}, "max_length": 65536},
        "MODELPRESS_MAX_TEXT_LENGTH", "8,192 tokens"),
    "4,097 text rows padded to 4,096 tokens": (
        lambda b: {"model": f"hf:{b.hf}", "data": {"eval": str(b.texts)}, "max_length": 4096},
        "MODELPRESS_MAX_TEXT_TOKENS", "16,777,216 tokens"),
    "a safetensors header declaring 100,000 x 100,000 floats": (
        lambda b: {"model": f"export:{b.pt2}", "data": {"eval": str(b.huge_header)}},
        "MODELPRESS_MAX_TENSOR_ELEMENTS", "268,435,456 elements"),
    "latency batch 512 of 4 MiB rows (2 GiB)": (
        lambda b: {"model": f"export:{b.pt2}", "data": {"eval": str(b.wide_rows)}, "latency_batches": [1, 512]},
        "MODELPRESS_MAX_LATENCY_BATCH_BYTES", "1,073,741,824 bytes"),
}


def _cli_args(request: dict) -> list[str]:
    args = ["--model", request["model"], "--data", f"eval={request['data']['eval']}"]
    if "weights" in request:
        args += ["--weights", request["weights"]]
    if "preprocess" in request:
        args += ["--preprocess", json.dumps(request["preprocess"])]
    if "max_length" in request:
        args += ["--max-length", str(request["max_length"])]
    if "latency_batches" in request:
        args += ["--latency-batches", ",".join(map(str, request["latency_batches"]))]
    return args


@pytest.mark.parametrize("case", list(CASES))
def test_the_cli_refuses_data_that_decodes_huge_in_one_line_naming_the_limit_quickly_and_in_bounded_memory(
        site, bombs, tmp_path, case):
    make, variable, limit = CASES[case]
    # The byte limit raised out of the way: only a decoded-size limit stands between these files and the worker.
    env = {**site.env, "MODELPRESS_MAX_WEIGHTS_BYTES": str(1 << 30),
           "MODELPRESS_FACTORY_ALLOWLIST": "tests.faults.models"}
    rss = tmp_path / "peak-rss-kb"
    before = site.count_rows()
    start = time.monotonic()
    out = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(rss), sys.executable, "-m", "modelpress", "submit",
                          *_cli_args(make(bombs)), "--recipe", "dynamic-int8", "--backend", "fbgemm"],
                         env=env, capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - start
    peak_kb = int(rss.read_text().split()[-1])
    assert out.returncode == 2, out.stderr
    line = out.stderr.rstrip("\n")
    assert "\n" not in line and line.startswith("error: ") and "Traceback" not in line, out.stderr
    assert variable in line and f"over the limit of {limit}" in line, line
    assert out.stdout == "" and site.count_rows() == before  # nothing submitted
    assert seconds < CLI_SECONDS and peak_kb < CLI_PEAK_KB, (seconds, peak_kb)
    print(f"\n{case}: exit 2 in {seconds:.1f} s, peak {peak_kb / 1024:.0f} MB: {line}")
    record("bad_input", group="decoded size", case=case, stage="submit", error=line.removeprefix("error: "),
           seconds=round(seconds, 1), peak_mb=round(peak_kb / 1024))


@pytest.mark.timeout(900)
def test_the_same_inputs_past_submit_fail_on_the_real_worker_naming_the_limit_once_and_the_worker_keeps_serving(
        site, bombs, monkeypatch):
    from modelpress.optimize.sources import parse_model_ref

    site.worker()
    # The submitter's own limit on max_length raised, as another producer's could be: the worker's stays 8192.
    monkeypatch.setenv("MODELPRESS_MAX_TEXT_LENGTH", "65536")
    producer = site.producer()
    try:
        reqs = []
        for make, _, _ in CASES.values():
            fields = dict(make(bombs))
            ref = parse_model_ref(fields.pop("model"), **fields)
            reqs.append(producer.validate(model=ref.display_name, recipe="dynamic-int8", backend="fbgemm", ref=ref))
        reqs.append(producer.validate(model=QUICK, recipe="dynamic-int8", backend="fbgemm"))
        sub = producer.submit_batch(reqs, name="decoded-size-past-submit", kind="manifest", reuse=False)
    finally:
        producer.close()
    worker = site.workers.procs["fbgemm"]
    rows = site.wait_finished(sub.job_ids, timeout=600)
    *bad, good = (rows[j] for j in sub.job_ids)
    for (case, (_, variable, limit)), row in zip(CASES.items(), bad):
        print(f"\n{case}: {row['status']} after {row['attempts']} attempt(s): {row['error']}")
        assert row["status"] == "failed" and variable in (row["error"] or ""), (case, row["error"])
        assert f"over the limit of {limit}" in row["error"], (case, row["error"])
        assert row["attempts"] == 1 and row["artifact_uri"] is None, case  # bad input: never retried
        record("bad_input", group="decoded size", case=case, stage="worker", error=row["error"])
    # The worker survived every one of them and still serves: the good job, queued last, ran to a result.
    assert good["status"] in ("succeeded", "rejected") and good["artifact_uri"], good["error"]
    assert worker.poll() is None and site.workers.procs["fbgemm"] is worker
    peak_kb = _peak_rss_kb_of_worker(worker.pid)  # the same pool child ran every job (replaced only above 3 GiB)
    print(f"\nworker peak resident size over all jobs: {peak_kb / 1024:.0f} MB")
    assert peak_kb < CLI_PEAK_KB, peak_kb
