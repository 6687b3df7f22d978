"""The zoo report runs real recipes through the real pipeline and prints measured numbers."""

from __future__ import annotations

import json

import pytest
import torch

import modelpress
from modelpress.errors import RecipeError
from modelpress.optimize.measure import compute_metric, predict
from modelpress.zoo.models import mlp_spec
from modelpress.zoo.report import ReportRow, format_report, run_zoo_report

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def mlp_rows(tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    keep_fc2 = store / "int8-keep-fc2.json"
    keep_fc2.write_text(json.dumps({"name": "int8-keep-fc2",
                                    "steps": [{"type": "quantize_dynamic", "keep_float": ["fc2"]}]}))
    return run_zoo_report(store=store, models=["mlp"], warmup=2, runs=5,
                          recipes=["l1-sparse50", "prune50-finetune", "distill-w0.5", "dynamic-int8", str(keep_fc2)])


def test_the_report_has_one_row_per_model_and_recipe_with_measured_numbers(mlp_rows):
    by = {r.recipe: r for r in mlp_rows}
    assert list(by) == ["l1-sparse50", "prune50-finetune", "distill-w0.5", "dynamic-int8", "int8-keep-fc2"]
    l1, pruned = by["l1-sparse50"], by["prune50-finetune"]
    for r in (l1, pruned):
        # Measured either way; the 1 % default budget of built-in recipes gives the verdict on the MLP.
        assert r.status in ("succeeded", "rejected") and r.size_before_bytes > 0 and r.size_after_bytes > 0
        assert set(r.latency_before_ms) == set(r.latency_after_ms) == {1, 64}
        assert r.metric_name == "top1_agreement" and r.metric_before == 1.0
    # Zeros in dense tensors: same bytes on disk; the compressed size is only a labelled note.
    assert l1.size_ratio == pytest.approx(1.0, abs=0.01)
    assert any("not the artifact" in n for n in l1.notes)
    # Channels removed for real: half the hidden neurons → about half the bytes, params and FLOPs.
    assert pruned.size_ratio > 1.8 and pruned.flops_ratio > 1.8
    assert pruned.params_after < 0.55 * pruned.params_before
    assert pruned.float_layers == ["fc1", "fc2"] and not pruned.quantized


def test_what_stayed_float_is_read_from_the_reloaded_artifact(mlp_rows):
    by = {r.recipe: r for r in mlp_rows}
    assert by["dynamic-int8"].quantized and by["dynamic-int8"].float_layers == []
    assert by["int8-keep-fc2"].float_layers == ["fc2"]
    assert by["int8-keep-fc2"].size_after_bytes > by["dynamic-int8"].size_after_bytes
    line = next(line for line in format_report(mlp_rows).splitlines() if line.startswith("| int8-keep-fc2"))
    assert "| fc2 |" in line


def test_a_recipe_that_does_not_apply_to_a_model_gives_an_error_row_with_the_reason(mlp_rows):
    row = next(r for r in mlp_rows if r.recipe == "distill-w0.5")
    assert row.status == "error" and "width" in row.error and "register_student" in row.error


def test_the_reported_artifact_reloads_and_reproduces_the_reported_metric(mlp_rows):
    row = next(r for r in mlp_rows if r.recipe == "prune50-finetune")
    model = modelpress.load(row.artifact_path)
    assert model.fc1.out_features == 512
    spec = mlp_spec()
    data = spec.data()
    ref = spec.build()
    spec.pretrained(ref, None)
    metric = compute_metric(spec.metric, predict(model, data.eval_inputs), labels=None,
                            reference=predict(ref.eval(), data.eval_inputs))
    assert metric == pytest.approx(row.metric_after)


def test_the_formatted_table_shows_sizes_latencies_metrics_params_flops_and_what_stayed_float(mlp_rows):
    text = format_report(mlp_rows)
    assert "### mlp" in text
    header = next(line for line in text.splitlines() if line.startswith("| recipe"))
    for col in ("size bytes before→after", "b1 ms before→after", "b64 ms before→after", "top1_agreement before→after",
                "params before→after", "FLOPs before→after", "stayed float"):
        assert col in header
    pruned = next(r for r in mlp_rows if r.recipe == "prune50-finetune")
    line = next(line for line in text.splitlines() if line.startswith("| prune50-finetune"))
    assert f"{pruned.size_before_bytes:,}→{pruned.size_after_bytes:,}" in line
    assert f"{pruned.size_ratio:.2f}×" in line and "all (no quantization)" in line
    assert len(line.split(" | ")) == len(header.split(" | "))
    error_line = next(line for line in text.splitlines() if line.startswith("| distill-w0.5"))
    assert "register_student" in error_line and len(error_line.split(" | ")) == len(header.split(" | "))


def test_an_unknown_recipe_name_is_refused_before_any_model_runs(tmp_path):
    with pytest.raises(RecipeError, match="unknown recipe 'prune99'"):
        run_zoo_report(store=tmp_path, models=["mlp"], recipes=["prune99"])
    assert not any(tmp_path.iterdir())


def test_quantized_rows_list_the_float_layers_or_say_none():
    row = ReportRow(model="m", recipe="q", engine="fbgemm", status="succeeded", size_before_bytes=4, size_after_bytes=1,
                    metric_name="accuracy", metric_before=0.9, metric_after=0.89, quantized=True,
                    float_layers=["classifier.3"])
    assert "classifier.3" in format_report([row])
    row.float_layers = []
    assert "| none |" in format_report([row])
    assert row.size_ratio == 4.0 and row.metric_drop_points == pytest.approx(1.0)
