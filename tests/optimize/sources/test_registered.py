"""Registered factories through a model reference: today's zoo behind the source interface."""

from __future__ import annotations

from pathlib import Path

from tests.optimize.sources.conftest import run


def test_a_registered_model_by_reference_is_the_same_job_as_by_name(tmp_path: Path) -> None:
    from modelpress.optimize.sources import parse_model_ref

    by_ref = run(parse_model_ref("mlp"), "dynamic-int8", tmp_path)
    from modelpress.optimize import optimize_model, resolve_recipe

    by_name = optimize_model(model_name="mlp", recipe=resolve_recipe("dynamic-int8"), engine="fbgemm",
                             store=tmp_path, warmup=2, runs=5)
    assert by_name.reused and by_name.artifact_key == by_ref.artifact_key  # same content → same key
    assert by_ref.metric_name == "top1_agreement"
