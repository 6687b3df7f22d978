"""The bulk commands from a shell: submit a manifest, list batches, wait for a batch, report on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelpress.settings import Settings


def _run(args, home, *, timeout=120, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPRESS_")}
    env.update({"MODELPRESS_HOME": str(home), **extra})
    return subprocess.run([sys.executable, "-m", "modelpress", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _engine(home: Path):
    from modelpress.cli import ensure_db
    from modelpress.models_db import make_engine

    settings = Settings(home=home)
    ensure_db(settings)
    return make_engine(settings.effective_database_url)


def _batch_with_results(home: Path, *, fail_one: bool) -> str:
    """A manifest batch as workers would leave it: fbgemm and qnnpack results, maybe one failure."""
    from modelpress.models_db import claim_job, create_job, fail_job, finish_job
    from modelpress.models_db.jobs import stage_batch

    from modelpress.models_db import make_sessionmaker

    engine = _engine(home)
    with make_sessionmaker(engine)() as s:
        batch = stage_batch(session=s, name="nightly-zoo", kind="manifest", source="/srv/zoo.yaml")
        s.commit()
        for n, (backend, recipe) in enumerate([("fbgemm", "dynamic-int8"), ("fbgemm", "l1-sparse50"),
                                               ("qnnpack", "dynamic-int8")]):
            job = create_job(session=s, model_name="mlp", recipe_name=recipe, recipe_sha256=f"{n}" * 64,
                             recipe_json=json.dumps({"name": recipe, "steps": [{"type": "quantize_dynamic"}]}),
                             backend=backend, batch_id=batch.id)
            claim_job(session=s, job_id=job.id, host="h", arch="x86_64", task_id="t", stale_before=None, token="T")
            if fail_one and n == 1:
                fail_job(session=s, job_id=job.id, token="T", error="weights do not fit the architecture")
                continue
            finish_job(session=s, job_id=job.id, status="succeeded", token="T", values={
                "size_before_bytes": 2_513_821, "size_after_bytes": 654_143 + n, "metric_name": "top1_agreement",
                "metric_before": 1.0, "metric_after": 0.97, "latency_batch_size": 64, "latency_threads": 1,
                "latency_before_median_ms": 0.9, "latency_after_median_ms": 0.3, "artifact_uri": f"/a/{n}.mpz",
                "measurements": {"latency_before": [{"batch_size": 1, "median_ms": 0.08},
                                                    {"batch_size": 64, "median_ms": 0.9}],
                                 "latency_after": [{"batch_size": 1, "median_ms": 0.1},
                                                   {"batch_size": 64, "median_ms": 0.3}], "float_layers": []}})
        batch_id = batch.id
    engine.dispose()
    return batch_id


def test_a_malformed_manifest_exits_2_listing_each_line_and_field_and_writes_nothing(tmp_path):
    manifest = tmp_path / "bad.yaml"
    manifest.write_text("defaults:\n  recipes: [dynamic-int8]\n  backends: [fbgemm, tpu]\n"
                        "models:\n  - model: mlp\n    budget: {max_drop: -1}\n  - resnet9000\n")
    res = _run(["submit", str(manifest)], tmp_path)
    assert res.returncode == 2
    assert f"{manifest}:3: defaults.backends[1]: unknown backend 'tpu'" in res.stderr
    assert f"{manifest}:6: models[0].budget.max_drop: Input should be greater than or equal to 0" in res.stderr
    assert f"{manifest}:7: models[1].model: unknown model 'resnet9000'" in res.stderr
    assert "nothing was submitted" in res.stderr and res.stdout == ""
    assert json.loads(_run(["jobs", "--format", "json"], tmp_path).stdout) == []
    assert json.loads(_run(["batches", "--format", "json"], tmp_path).stdout) == []
    assert not (tmp_path / "artifacts").exists()


def test_submitting_a_manifest_prints_its_batch_id_and_batches_lists_it_with_counts(tmp_path):
    manifest = tmp_path / "zoo.yaml"
    manifest.write_text("defaults: {recipes: [dynamic-int8, l1-sparse50], backends: [fbgemm, qnnpack]}\n"
                        "models: [mlp, digits_cnn]\n")
    res = _run(["submit", str(manifest)], tmp_path)
    assert res.returncode == 0, res.stderr
    batch_id = res.stdout.strip()
    assert "8 jobs, 8 enqueued, 0 reused" in res.stderr
    (listed,) = json.loads(_run(["batches", "--format", "json"], tmp_path).stdout)
    assert (listed["id"], listed["name"], listed["kind"], listed["total"], listed["queued"]) == (
        batch_id, "zoo", "manifest", 8, 8)
    table = _run(["batches"], tmp_path).stdout
    assert batch_id[:8] in table and "manifest" in table


def test_waiting_for_a_batch_with_a_failed_job_shows_progress_per_backend_and_exits_1(tmp_path):
    batch_id = _batch_with_results(tmp_path, fail_one=True)
    res = _run(["wait", "--batch", batch_id[:8]], tmp_path)
    assert res.returncode == 1
    assert "[########################] 3/3" in res.stderr
    assert "fbgemm 2/2: 1 done, 1 failed, 0 running, 0 queued" in res.stderr
    assert "qnnpack 1/1: 1 done, 0 failed" in res.stderr
    assert "1 of 3 jobs failed" in res.stderr
    assert "weights do not fit the architecture" in res.stdout  # the reason, in the results' notes


def test_waiting_for_a_batch_given_as_the_only_argument_exits_0_when_nothing_failed(tmp_path):
    batch_id = _batch_with_results(tmp_path, fail_one=False)
    res = _run(["wait", batch_id], tmp_path)
    assert res.returncode == 0, res.stderr
    assert "fbgemm 2/2: 2 done, 0 failed" in res.stderr
    assert "b64 ms before" in res.stdout


def test_waiting_for_an_unknown_batch_exits_2(tmp_path):
    res = _run(["wait", "--batch", "nosuchbatch"], tmp_path)
    assert res.returncode == 2 and "no batch 'nosuchbatch'" in res.stderr


def test_waiting_gives_up_with_exit_3_when_jobs_stay_queued(tmp_path):
    manifest = tmp_path / "zoo.yaml"
    manifest.write_text("defaults: {recipes: [dynamic-int8], backends: [fbgemm]}\nmodels: [mlp]\n")
    batch_id = _run(["submit", str(manifest)], tmp_path).stdout.strip()
    res = _run(["wait", "--batch", batch_id, "--timeout", "1"], tmp_path)
    assert res.returncode == 3 and "1 of 1 jobs not finished" in res.stderr


def test_report_writes_a_self_contained_html_page_and_prints_json_or_csv(tmp_path):
    batch_id = _batch_with_results(tmp_path, fail_one=True)
    html = tmp_path / "report.html"
    res = _run(["report", batch_id, "--html", str(html), "--format", "csv"], tmp_path)
    assert res.returncode == 0, res.stderr
    page = html.read_text()
    assert "modelpress batch nightly-zoo" in page and "<svg" in page and "http" not in page
    assert "weights do not fit the architecture" in page
    assert res.stdout.splitlines()[0].startswith("job_id,model,") and len(res.stdout.splitlines()) == 4
    data = json.loads(_run(["report", batch_id, "--format", "json"], tmp_path).stdout)
    assert sorted(r["status"] for r in data) == ["failed", "succeeded", "succeeded"]


@pytest.mark.parametrize(("args", "message"), [
    (["report"], "give a batch id"),
    (["report", "nosuchbatch"], "no batch 'nosuchbatch'"),
    (["report", "nosuchbatch", "--zoo"], "not both"),
    (["report", "--zoo", "--models", "resnet9000"], "unknown model 'resnet9000'"),
    (["report", "--zoo", "--recipes", "int3-magic"], "unknown recipe 'int3-magic'"),
])
def test_report_refuses_bad_input_with_exit_2(tmp_path, args, message):
    res = _run(args, tmp_path)
    assert res.returncode == 2 and message in res.stderr


def test_report_into_a_missing_folder_exits_2_and_writes_nothing(tmp_path):
    batch_id = _batch_with_results(tmp_path, fail_one=False)
    res = _run(["report", batch_id, "--html", str(tmp_path / "no" / "r.html")], tmp_path)
    assert res.returncode == 2 and "does not exist" in res.stderr
    assert not (tmp_path / "no").exists()


def test_the_zoo_report_runs_models_by_recipes_in_process_and_renders_html(tmp_path):
    html = tmp_path / "zoo.html"
    res = _run(["report", "--zoo", "--models", "mlp", "--recipes", "dynamic-int8,l1-sparse50", "--engine", "fbgemm",
                "--html", str(html), "--format", "json"], tmp_path, timeout=300,
               MODELPRESS_LATENCY_WARMUP="1", MODELPRESS_LATENCY_RUNS="3")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    # Both built-ins cost the MLP more than their default 1 % budget: measured, then rejected with the reason.
    assert [(r["model"], r["recipe"], r["status"]) for r in rows] == [
        ("mlp", "dynamic-int8", "rejected"), ("mlp", "l1-sparse50", "rejected")]
    assert all("more than the budget allows" in r["error"] for r in rows)
    assert rows[0]["size_after_bytes"] < rows[0]["size_before_bytes"] / 3  # int8 weights: ~4x fewer bytes
    assert rows[1]["stayed_float"] == "all (no quantization)"
    assert "modelpress zoo report" in html.read_text()
