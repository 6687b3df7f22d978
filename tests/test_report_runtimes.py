"""Reports name the runtime of each artifact and, for auto jobs, the runner-up candidate."""

from __future__ import annotations

from modelpress.report import render_csv, render_table, rows_from_jobs


def _cand(rt: str, nbytes: int, ms: float) -> dict:
    return {"runtime": rt, "status": "built", "bytes": nbytes,
            "latency": [{"batch_size": 1, "median_ms": ms / 10}, {"batch_size": 64, "median_ms": ms}]}


def test_an_auto_row_shows_its_runtime_and_the_fastest_other_candidate_as_runner_up() -> None:
    m = {"runtime": "openvino", "latency_after": [], "extra": {"candidates": [
        _cand("torch", 900, 3.0), _cand("onnxruntime", 800, 2.0), _cand("openvino", 700, 1.0),
        {"runtime": "x", "status": "skipped", "reason": "nope"}]}}
    job = {"id": "j1234567", "model_name": "mlp", "recipe_name": "r", "backend": "fbgemm", "status": "succeeded",
           "runtime": "openvino", "measurements": m}
    (row,) = rows_from_jobs([job, ])
    assert row.runtime == "openvino" and row.runner_up == "onnxruntime (800 B, 2.000 ms)"
    assert "runner-up onnxruntime (800 B, 2.000 ms)" in render_table([row])
    assert render_csv([row]).splitlines()[0].endswith(",runtime,runner_up,runtime_precision")
    old = rows_from_jobs([{**job, "runtime": None, "measurements": {}}])[0]
    assert old.runner_up is None and render_csv([old]).splitlines()[1].endswith(",torch,,")


def test_the_csv_states_the_precision_the_runtime_chose_on_the_host_that_measured_the_job() -> None:
    m = {"runtime": "openvino", "latency_after": [], "extra": {
        "candidates": [{**_cand("openvino", 700, 1.0), "chosen": True}],
        "execution": {"device": "CPU", "inference_precision": "bf16", "weighted_ops": {}}}}
    job = {"id": "j1", "model_name": "mlp", "recipe_name": "r", "backend": "fbgemm", "status": "succeeded",
           "runtime": "openvino", "measurements": m}
    (row,) = rows_from_jobs([job])
    assert row.runtime_precision == "bf16"
    assert render_csv([row]).splitlines()[1].endswith(",openvino,,bf16")


def test_the_runner_up_may_be_another_variant_of_the_winning_runtime_and_names_its_settings() -> None:
    win = {**_cand("onnxruntime", 640, 1.0), "variant": {"per_channel": False}, "chosen": True}
    other = {**_cand("onnxruntime", 650, 1.5), "variant": {"per_channel": True}}
    m = {"runtime": "onnxruntime", "latency_after": [], "extra": {"candidates": [_cand("torch", 900, 3.0), other, win]}}
    job = {"id": "j7654321", "model_name": "mlp", "recipe_name": "r", "backend": "fbgemm", "status": "succeeded",
           "runtime": "onnxruntime", "measurements": m}
    (row,) = rows_from_jobs([job])
    assert row.runner_up == "onnxruntime (per_channel=True) (650 B, 1.500 ms)"
