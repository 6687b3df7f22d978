"""Measurement: bytes on disk, latency statistics, metrics, params of quantized models."""

from __future__ import annotations

import pytest
import torch

from modelpress.optimize.backends import get_backend
from modelpress.optimize.measure import compute_metric, count_flops, count_params, file_size, measure_latency
from modelpress.optimize.zoo import SeedMLP


def test_latency_reports_median_and_p90_over_the_requested_runs_with_shape_and_threads():
    model = SeedMLP().eval()
    s = measure_latency(model, torch.randn(16, 512), warmup=2, runs=9, threads=1)
    assert (s.runs, s.warmup, s.batch_size, s.threads, s.input_shape) == (9, 2, 16, 1, [[16, 512]])
    assert 0 < s.min_ms <= s.median_ms <= s.p90_ms <= s.max_ms


def test_latency_refuses_a_model_in_training_mode():
    with pytest.raises(ValueError, match="eval mode"):
        measure_latency(SeedMLP().train(), torch.randn(2, 512), warmup=0, runs=3)


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
