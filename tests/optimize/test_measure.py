"""Measurement: bytes on disk, latency statistics, metrics, params of quantized models."""

from __future__ import annotations

import pytest
import torch

from modelpress.optimize.backends import get_backend
from modelpress.optimize.measure import (
    compute_metric,
    count_flops,
    count_params,
    file_size,
    host_timing_lock,
    interleaved_latency,
    measure_latency,
)
from modelpress.zoo.models import SeedMLP


def test_latency_reports_median_and_p90_over_the_requested_runs_with_shape_and_threads():
    model = SeedMLP().eval()
    s = measure_latency(model, torch.randn(16, 512), warmup=2, runs=9, threads=1)
    assert (s.runs, s.warmup, s.batch_size, s.threads, s.input_shape) == (9, 2, 16, 1, [[16, 512]])
    assert 0 < s.min_ms <= s.median_ms <= s.p90_ms <= s.max_ms


def test_latency_refuses_a_model_in_training_mode():
    with pytest.raises(ValueError, match="eval mode"):
        measure_latency(SeedMLP().train(), torch.randn(2, 512), warmup=0, runs=3)


def test_interleaved_timing_alternates_the_models_each_round_and_pools_every_run_per_model():
    import time

    calls: list[str] = []

    def sleeper(name: str, seconds: float):
        def fn(x: torch.Tensor) -> torch.Tensor:
            calls.append(name)
            time.sleep(seconds)
            return x
        return fn

    models = {"slow": sleeper("slow", 0.004), "fast": sleeper("fast", 0.001), "mid": sleeper("mid", 0.002)}
    out = interleaved_latency(models, torch.randn(2, 3), rounds=3, runs=4, warmup=1)
    for name in models:
        s = out[name]["stats"]
        assert (s.runs, s.warmup, s.batch_size, s.input_shape) == (12, 1, 2, [[2, 3]])
        assert len(out[name]["round_medians_ms"]) == 3
    assert out["fast"]["stats"].median_ms < out["mid"]["stats"].median_ms < out["slow"]["stats"].median_ms
    # Each round is one block of 5 calls (1 warm-up + 4 timed) per model, and the first model rotates.
    firsts = [calls[i * 15] for i in range(3)]
    assert firsts == ["slow", "fast", "mid"] and len(calls) == 45
    with pytest.raises(ValueError, match="eval mode"):
        interleaved_latency({"m": SeedMLP().train()}, torch.randn(2, 512), rounds=1, runs=3, warmup=0)


def test_quantized_weights_are_counted_even_though_they_are_not_parameters():
    model = SeedMLP().eval()
    q = get_backend().quantize_dynamic(model, engine="fbgemm", per_channel=True, module_types=["Linear"], keep_float=[])
    assert sum(p.numel() for p in q.parameters()) == 0  # the predecessor's "0.00 MB" bug, in one line
    assert count_params(q) >= sum(p.numel() for p in model.parameters())


def test_file_size_is_the_byte_count_on_disk(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"x" * 1234)
    assert file_size(p) == 1234


def test_metrics_are_computed_from_outputs_not_assumed():
    out = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert compute_metric("accuracy", out, labels=torch.tensor([0, 1, 1]), reference=None) == pytest.approx(2 / 3)
    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert compute_metric("top1_agreement", out, labels=None, reference=ref) == pytest.approx(2 / 3)
    assert compute_metric("cosine", ref, labels=None, reference=ref) == pytest.approx(1.0)


def test_flops_of_the_seed_mlp_are_two_per_multiply_accumulate():
    assert count_flops(SeedMLP().eval(), torch.randn(1, 512)) == 2 * (512 * 1024 + 1024 * 100)


# ----------------------------------------------------------------- one timing at a time per host (issue 10, item 11)
_HOLD = """
import sys, time
from modelpress.optimize.measure import host_timing_lock
with host_timing_lock(sys.argv[1], phase="holder"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_the_host_timing_lock_makes_another_process_wait_and_records_the_wait_and_the_load(tmp_path):
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path), "1.5"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with host_timing_lock(tmp_path, phase="mine") as rec:
            pass
    finally:
        holder.wait(timeout=30)
    assert rec["waited_s"] >= 1.0, rec  # it queued behind the other process's timing
    assert rec["lock_file"] == str(tmp_path / "modelpress-timing.lock")
    assert rec["load_avg_1m_start"] is not None and rec["load_avg_1m_end"] is not None


_OPTIMIZE = """
import json, sys
from modelpress.optimize.job import optimize_model
from modelpress.optimize.recipes import Recipe
recipe = Recipe.from_dict({"name": "all-int8", "steps": [{"type": "quantize_dynamic"}]})
r = optimize_model(model_name="mlp", recipe=recipe, engine="fbgemm", store=sys.argv[1], timing_lock_dir=sys.argv[2],
                   warmup=10, runs=200)
print(json.dumps(r.extra["timing"]))
"""


def test_two_processes_optimizing_at_once_never_time_their_models_at_the_same_moment(tmp_path):
    import json
    import subprocess
    import sys

    lock_dir = tmp_path / "lock"
    procs = [subprocess.Popen([sys.executable, "-c", _OPTIMIZE, str(tmp_path / f"store{i}"), str(lock_dir)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    timings = [json.loads(o.strip().splitlines()[-1]) for o in outs]
    phases = [[(ph["start"], ph["end"]) for ph in t["phases"]] for t in timings]
    assert all(len(p) == 1 for p in phases)  # before and after, timed together after the choice
    for a0, a1 in phases[0]:
        for b0, b1 in phases[1]:
            assert a1 <= b0 or b1 <= a0, f"timed at the same time: {(a0, a1)} and {(b0, b1)}"
    for t in timings:
        assert t["load_avg_1m"] is not None and t["lock_wait_s"] >= 0
        assert {ph["lock_file"] for ph in t["phases"]} == {str(lock_dir / "modelpress-timing.lock")}
