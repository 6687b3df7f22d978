"""Manifests are validated whole (line numbers, fields), expand to jobs, and re-submission reuses results."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from modelpress.api import Producer, installed_torch_version, weights_content_id
from modelpress.manifest import load_manifest, parse_manifest
from modelpress.manifest_yaml import ManifestError
from modelpress.models_db import claim_job, fail_job, finish_job, list_jobs, migrate
from modelpress.models_db.jobs import list_batches
from modelpress.settings import Settings
from modelpress.zoo.builtin_weights import builtin_content_id
from tests.faults.record import record

GOOD = """\
name: weekly
defaults:
  recipes: [dynamic-int8, prune50-dynamic-int8]
  backends: [fbgemm, qnnpack]
  budget: {max_drop: 0.02}
models:
  - mlp
  - model: mlp
    weights: w/mlp.pt
    budget: {max_drop: 0.0}
    backends: [qnnpack]
  - model: digits_cnn
    recipes:
      - dynamic-int8
      - name: prune20-int8
        steps: [{type: prune_l1_unstructured, amount: 0.2}, {type: quantize_dynamic}]
"""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


def _weights(path: Path, value: float = 1.0) -> None:
    """A small real ``torch.save`` state dict (submit-time checks read its structure)."""
    import torch

    torch.save({"w": torch.full((4,), value)}, path)


def _parse(text: str, settings: Settings, base: Path | None = None):
    return parse_manifest(textwrap.dedent(text), settings=settings, base_dir=base or Path("."), filename="m.yaml")


def _problems(text: str, settings: Settings, base: Path | None = None) -> list[str]:
    with pytest.raises(ManifestError) as e:
        _parse(text, settings, base)
    return [i.format("m.yaml") for i in e.value.issues]


def test_a_manifest_expands_to_one_job_per_model_recipe_and_backend_with_overrides(settings, tmp_path):
    (tmp_path / "w").mkdir()
    _weights(tmp_path / "w" / "mlp.pt")
    plan = _parse(GOOD, settings, tmp_path)
    jobs = [(r.model, r.weights, r.recipe.name, r.backend, r.recipe.budget.max_drop) for r in plan.requests]
    weights = str(tmp_path / "w" / "mlp.pt")
    assert plan.name == "weekly"
    assert jobs == [
        ("mlp", None, "dynamic-int8", "fbgemm", 0.02), ("mlp", None, "dynamic-int8", "qnnpack", 0.02),
        ("mlp", None, "prune50-dynamic-int8", "fbgemm", 0.02), ("mlp", None, "prune50-dynamic-int8", "qnnpack", 0.02),
        ("mlp", weights, "dynamic-int8", "qnnpack", 0.0), ("mlp", weights, "prune50-dynamic-int8", "qnnpack", 0.0),
        ("digits_cnn", None, "dynamic-int8", "fbgemm", 0.02), ("digits_cnn", None, "dynamic-int8", "qnnpack", 0.02),
        ("digits_cnn", None, "prune20-int8", "fbgemm", 0.02), ("digits_cnn", None, "prune20-int8", "qnnpack", 0.02),
    ]


def test_a_budget_changes_the_recipe_hash_so_results_under_another_budget_are_not_mixed_up(settings):
    plan = _parse("""
        defaults: {recipes: [dynamic-int8], backends: [fbgemm]}
        models:
          - mlp
          - {model: mlp, budget: {max_drop: 0.02, relative: true}}
        """, settings)
    plain, budgeted = plan.requests
    assert plain.recipe.budget.max_drop == 0.01 and budgeted.recipe.budget.max_drop == 0.02  # default vs own
    assert plain.recipe.sha256 != budgeted.recipe.sha256


def test_a_manifest_budget_changes_only_the_fields_it_gives_of_the_recipes_own_budget(settings):
    plan = _parse("""
        defaults: {recipes: [prune-distill-int8], backends: [fbgemm]}
        models:
          - {model: mlp, budget: {max_drop: 0.05}}
          - {model: mlp, budget: {max_drop: 0.05, max_float_layers: 2, confidence: 0.95}}
        """, settings)
    own = plan.requests[0].recipe.budget, plan.requests[1].recipe.budget
    # The recipe's no-float-layers and its 0.9 bound stay unless the manifest says otherwise.
    assert (own[0].max_drop, own[0].max_float_layers, own[0].confidence) == (0.05, 0, 0.9)
    assert (own[1].max_drop, own[1].max_float_layers, own[1].confidence) == (0.05, 2, 0.95)


def test_a_recipe_file_is_found_relative_to_the_manifest(settings, tmp_path):
    (tmp_path / "r.yaml").write_text("name: mine\nsteps: [{type: quantize_dynamic, per_channel: false}]\n")
    plan = _parse("models: [mlp]\ndefaults: {recipes: [r.yaml], backends: [fbgemm]}\n", settings, tmp_path)
    assert plan.requests[0].recipe.name == "mine"


@pytest.mark.parametrize(("text", "expected"), [
    ("models: [mlp]\ndefaults: {recipes: [dynamic-int8], backends: fbgemm}\n",
     "m.yaml:2: defaults.backends: Input should be a valid list"),
    ("models:\n  - model: mlp\n    recipes: [dynamic-int8]\n    backends: [fbgemm]\n    wieghts: w.pt\n",
     "m.yaml:5: models[0].wieghts: unknown field; allowed: model, weights, data, preprocess, metric, max_length, latency_batches, primary_output, recipes, backends, budget"),
    ("modles: [mlp]\n", ("m.yaml:1: models: required field is missing",
                          "m.yaml:1: modles: unknown field; allowed: version, name, defaults, models")),
    ("models: [mlp]\ndefaults:\n  recipes: [dynamic-int8]\n  backends: [fbgemm]\n  budget: {max_drop: -0.1}\n",
     "m.yaml:5: defaults.budget.max_drop: Input should be greater than or equal to 0"),
    ("models: [mlp]\ndefaults: {recipes: [dynamic-int8], backends: [fbgemm], budget: {max_dorp: 1}}\n",
     ("m.yaml:2: defaults.budget.max_dorp: unknown field; allowed: max_drop, relative",
      "m.yaml:2: defaults.budget.max_drop: required field is missing")),
    ("models: []\n", "m.yaml:1: models: must not be empty"),
    ("models: [mlp]\ndefaults: {recipes: [], backends: [fbgemm]}\n", "m.yaml:2: defaults.recipes: must not be empty"),
    ("models: [resnet9000]\ndefaults: {recipes: [dynamic-int8], backends: [fbgemm]}\n",
     "m.yaml:1: models[0].model: unknown model 'resnet9000'"),
    ("models: [mlp]\ndefaults:\n  recipes: [dynamic-int8, int3-magic]\n  backends: [fbgemm]\n",
     "m.yaml:3: defaults.recipes[1]: unknown recipe 'int3-magic'"),
    ("models: [mlp]\ndefaults:\n  recipes: [dynamic-int8]\n  backends: [fbgemm, tpu]\n",
     "m.yaml:4: defaults.backends[1]: unknown backend 'tpu'; choose one of: fbgemm, qnnpack"),
    ("models:\n  - {model: mlp, weights: nope.pt}\ndefaults: {recipes: [dynamic-int8], backends: [fbgemm]}\n",
     "m.yaml:2: models[0].weights: weights file 'nope.pt' does not exist"),
    ("models:\n  - model: mlp\n    model: digits_cnn\ndefaults: {recipes: [dynamic-int8], backends: [fbgemm]}\n",
     "m.yaml:3: models[0].model: duplicate key"),
    ("models: [mlp, mlp]\ndefaults: {recipes: [dynamic-int8], backends: [fbgemm]}\n",
     "m.yaml:1: models[1]: the job mlp × dynamic-int8 × fbgemm is already listed at models[0]"),
    ("models: [mlp]\ndefaults:\n  recipes:\n    - {name: x, steps: [{type: quantize_dynamic, per_chanel: true}]}\n"
     "  backends: [fbgemm]\n", "m.yaml:4: defaults.recipes[0]: steps.0.per_chanel"),
    ("models: [mlp]\ndefaults: {recipes: [7], backends: [fbgemm]}\n",
     "m.yaml:2: defaults.recipes[0]: must be a recipe name, a recipe file or an inline recipe mapping, not int"),
    ("models: [mlp]\n", ("m.yaml:1: models[0]: no recipes: give `recipes` for this model or under `defaults`",
                         "m.yaml:1: models[0]: no backends: give `backends` for this model or under `defaults`")),
    ("models:\n  - {model: mlp, eval_data: held_out.npz}\ndefaults: {recipes: [dynamic-int8], backends: [fbgemm]}\n",
     "m.yaml:2: models[0].eval_data: unknown field"),
    ("models: [mlp\n", "m.yaml:2: not valid YAML"),
    ("", "m.yaml:1: the file is empty"),
    ("- mlp\n", "m.yaml:1: the manifest must be a mapping"),
    ("models:\n  - 5\ndefaults: {recipes: [dynamic-int8], backends: [fbgemm]}\n",
     "m.yaml:2: models[0]: must be a model name or a mapping"),
])
def test_a_malformed_manifest_is_refused_naming_the_line_and_the_field(settings, text, expected):
    problems = _problems(text, settings)
    expected = (expected,) if isinstance(expected, str) else expected
    assert len(problems) == len(expected), problems
    assert all(p.startswith(e) for p, e in zip(problems, expected)), problems


def test_every_problem_in_a_manifest_is_reported_at_once_even_next_to_a_type_error(settings):
    problems = _problems("""\
        defaults: {recipes: [dynamic-int8], backends: [fbgemm]}
        models:
          - model: resnet9000
            recipes: []
          - model: mlp
            backends: [tpu]
            budget: {max_drop: -1}
        """, settings)
    assert [p.split(":")[1] for p in problems] == ["3", "4", "6", "7"]
    assert "unknown model 'resnet9000'" in problems[0] and "unknown backend 'tpu'" in problems[2]


def test_a_manifest_file_that_does_not_exist_is_a_clear_error(settings, tmp_path):
    with pytest.raises(ManifestError, match="no such file"):
        load_manifest(tmp_path / "nope.yaml", settings=settings)


def test_the_content_id_of_a_built_in_model_is_known_without_torch_and_changes_with_the_package_version():
    from importlib.metadata import version

    from modelpress.zoo import models as zoo

    code = hashlib.sha256(Path(zoo.__file__).read_bytes()).hexdigest()
    expected = hashlib.sha256(f"builtin:mlp:modelpress=={version('modelpress')}:code={code}".encode()).hexdigest()
    assert builtin_content_id("mlp") == expected
    assert builtin_content_id("digits_cnn") != expected
    assert builtin_content_id("no_such_model") is None


# ----------------------------------------------------------------------------- submitting, dedupe
@pytest.fixture
def producer(db_url, tmp_path):
    migrate.upgrade(db_url)
    p = Producer(Settings(home=tmp_path / "home", database_url=db_url))
    # Record what is published instead of reading the embedded broker's folder: kombu remembers
    # declared queues per process, so a second home in one test process would not get its binding.
    # The real broker is exercised by tests/test_bulk_queue.py.
    p.published = []
    p._app = SimpleNamespace(send_task=lambda name, args, **route: p.published.append((name, args[0], route["queue"])))
    yield p
    p.close()


def _messages(producer: Producer) -> int:
    return len(producer.published)


def _manifest(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "zoo.yaml"
    path.write_text(textwrap.dedent(text))
    return path


ZOO = """\
    defaults: {recipes: [dynamic-int8, l1-sparse50], backends: [fbgemm, qnnpack]}
    models:
      - mlp
      - {model: mlp, weights: mlp.pt}
    """


def _finish_all(producer: Producer, *, status: str = "succeeded", torch_version: str | None = None,
                builder: str | None = None, runtime_versions: dict[str, str] | None = None) -> None:
    """Play the worker: claim each queued job and record a result (as the task would)."""
    from modelpress.optimize.buildinfo import build_fingerprint

    with producer.sessions() as s:
        ids = [j.id for j in list_jobs(session=s, status="queued", limit=None)]
        for n, job_id in enumerate(ids):
            claim_job(session=s, job_id=job_id, host="h", arch="x86_64", task_id="t", stale_before=None, token="T")
            if status == "failed":
                fail_job(session=s, job_id=job_id, error="boom", token="T")
                continue
            finish_job(session=s, job_id=job_id, status=status, token="T", values={
                "size_before_bytes": 1000, "size_after_bytes": 250 + n, "metric_name": "top1_agreement",
                "metric_before": 1.0, "metric_after": 0.97, "latency_batch_size": 64,
                "latency_before_median_ms": 1.0, "latency_after_median_ms": 0.3, "artifact_uri": f"/a/{n}.mpz",
                "measurements": {"latency_after": [{"batch_size": 64, "median_ms": 0.3}]}, "engine_used": "fbgemm",
                "torch_version": torch_version or installed_torch_version(), "worker_host": "h",
                "builder_sha256": builder or build_fingerprint(), "runtime_versions": runtime_versions})


def test_a_manifest_becomes_one_manifest_batch_with_every_job_queued_and_published(producer, tmp_path):
    from modelpress.manifest import submit_manifest

    _weights(tmp_path / "mlp.pt")
    assert submit_manifest(producer, _manifest(tmp_path, ZOO)) == 0
    with producer.sessions() as s:
        (batch,) = list_batches(session=s)
        jobs = list_jobs(session=s, batch_id=batch["id"], limit=None)
    assert (batch["kind"], batch["name"], batch["total"], batch["queued"]) == ("manifest", "zoo", 8, 8)
    assert batch["source"] == "zoo.yaml"  # its file name: never the submitter's absolute path
    assert sorted(producer.published) == sorted(("modelpress.optimize", j.id, j.backend) for j in jobs)
    assert {j.model_sha256 for j in jobs if j.model_weights_uri is None} == {builtin_content_id("mlp")}
    assert {j.model_sha256 for j in jobs if j.model_weights_uri} == {
        weights_content_id("mlp", hashlib.sha256((tmp_path / "mlp.pt").read_bytes()).hexdigest())}


def test_resubmitting_a_finished_manifest_reuses_every_result_and_enqueues_nothing(producer, tmp_path):
    _weights(tmp_path / "mlp.pt")
    path = _manifest(tmp_path, ZOO)
    plan = load_manifest(path, settings=producer.settings)
    first = producer.submit_batch(plan.requests, name="zoo", kind="manifest")
    _finish_all(producer)
    published = _messages(producer)

    again = producer.submit_batch(load_manifest(path, settings=producer.settings).requests, name="zoo", kind="manifest")
    assert again.enqueued == [] and len(again.reused) == 8
    assert _messages(producer) == published
    with producer.sessions() as s:
        old = {j.id: j for j in list_jobs(session=s, batch_id=first.batch_id, limit=None)}
        new = list_jobs(session=s, batch_id=again.batch_id, limit=None)
    for job in new:
        src = old[job.reused_from_job_id]
        assert job.reused and job.status == "succeeded" and job.finished_at is not None
        assert (job.model_sha256, job.recipe_sha256, job.backend) == (src.model_sha256, src.recipe_sha256, src.backend)
        assert (job.size_after_bytes, job.metric_after, job.artifact_uri, job.measurements) == (
            src.size_after_bytes, src.metric_after, src.artifact_uri, src.measurements)


def test_a_reused_job_points_at_the_original_not_at_another_reuse(producer, tmp_path):
    _weights(tmp_path / "mlp.pt")
    reqs = load_manifest(_manifest(tmp_path, ZOO), settings=producer.settings).requests
    first = producer.submit_batch(reqs, name="a")
    _finish_all(producer)
    producer.submit_batch(reqs, name="b")
    third = producer.submit_batch(reqs, name="c")
    assert set(third.reused.values()) == set(first.job_ids)


def test_force_runs_every_job_again_even_when_results_exist(producer, tmp_path):
    _weights(tmp_path / "mlp.pt")
    reqs = load_manifest(_manifest(tmp_path, ZOO), settings=producer.settings).requests
    producer.submit_batch(reqs, name="a")
    _finish_all(producer)
    forced = producer.submit_batch(reqs, name="a", reuse=False)
    assert len(forced.enqueued) == 8 and forced.reused == {}


def test_failed_jobs_and_other_torch_versions_are_not_reused(producer, tmp_path):
    _weights(tmp_path / "mlp.pt")
    reqs = load_manifest(_manifest(tmp_path, ZOO), settings=producer.settings).requests
    producer.submit_batch(reqs, name="failed")
    _finish_all(producer, status="failed")
    assert len(producer.submit_batch(reqs, name="retry").enqueued) == 8
    _finish_all(producer, torch_version="1.0.0")
    assert len(producer.submit_batch(reqs, name="newer torch").enqueued) == 8


def test_results_built_by_other_code_or_other_runtime_packages_are_not_reused(producer, tmp_path):
    from modelpress.api import installed_package_versions

    _weights(tmp_path / "mlp.pt")
    reqs = load_manifest(_manifest(tmp_path, ZOO), settings=producer.settings).requests
    producer.submit_batch(reqs, name="old release")
    _finish_all(producer, builder="0" * 64)  # what a worker running other modelpress code records
    assert len(producer.submit_batch(reqs, name="after the upgrade").enqueued) == 8
    ours = installed_package_versions()
    assert "onnxruntime" in ours  # the README's install brings the runtimes; the check below needs one
    _finish_all(producer, runtime_versions={"onnxruntime": ours["onnxruntime"] + ".post9"})
    assert len(producer.submit_batch(reqs, name="other onnxruntime").enqueued) == 8
    # A package the producer does not have cannot be compared: the builder hash alone decides.
    _finish_all(producer, runtime_versions={"onnxruntime": ours["onnxruntime"], "notinstalled-rt": "9.9"})
    assert len(producer.submit_batch(reqs, name="same code, same packages").reused) == 8


def test_rejected_results_are_reused_with_their_status_and_reason(producer, tmp_path):
    _weights(tmp_path / "mlp.pt")
    reqs = load_manifest(_manifest(tmp_path, ZOO), settings=producer.settings).requests
    producer.submit_batch(reqs, name="a")
    _finish_all(producer, status="rejected")
    again = producer.submit_batch(reqs, name="b")
    with producer.sessions() as s:
        statuses = {j.status for j in list_jobs(session=s, batch_id=again.batch_id, limit=None)}
    assert statuses == {"rejected"} and len(again.reused) == 8


def test_changed_weights_are_a_new_model_and_run_again(producer, tmp_path):
    _weights(tmp_path / "mlp.pt")
    path = _manifest(tmp_path, ZOO)
    producer.submit_batch(load_manifest(path, settings=producer.settings).requests, name="a")
    _finish_all(producer)
    _weights(tmp_path / "mlp.pt", value=2.0)  # retrained
    again = producer.submit_batch(load_manifest(path, settings=producer.settings).requests, name="b")
    assert (len(again.enqueued), len(again.reused)) == (4, 4)  # the built-in mlp's 4 jobs are reused


def test_a_manifest_refuses_what_a_single_submit_refuses_such_as_a_truncated_weights_file(settings, tmp_path):
    _weights(tmp_path / "good.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "good.pt").read_bytes()[:100])
    problems = _problems("""\
        defaults: {recipes: [dynamic-int8, l1-sparse50], backends: [fbgemm, qnnpack]}
        models:
          - {model: mlp, weights: good.pt}
          - {model: mlp, weights: cut.pt}
        """, settings, tmp_path)
    assert len(problems) == 1 and problems[0].startswith("m.yaml:4: models[1].weights: weights file cut.pt is corrupt")


def test_validating_and_submitting_a_manifest_imports_no_torch(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from modelpress.settings import Settings; from modelpress.manifest import parse_manifest; "
            "import modelpress.store, modelpress.report, modelpress.commands.batches; "
            "parse_manifest('models: [mlp, digits_cnn]\\ndefaults: {recipes: [dynamic-int8], backends: [fbgemm]}', "
            f"settings=Settings(home={str(tmp_path)!r})); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


# --------------------------------------------------------------------------- hostile YAML (issue 10, item 12)
def _timed_problems(text: str, settings: Settings) -> tuple[list[str], float]:
    import time

    t0 = time.perf_counter()
    problems = _problems(text, settings)
    return problems, time.perf_counter() - t0


def test_a_billion_laughs_manifest_is_refused_quickly_with_a_line(settings):
    import tracemalloc

    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    text = "\n".join(levels) + "\nmodels: [mlp]\n"
    tracemalloc.start()
    try:
        problems, took = _timed_problems(text, settings)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert took < 2.0, took
    assert peak < 50 * 1024**2, peak
    assert len(problems) == 1 and "expand to more than" in problems[0] and problems[0].startswith("m.yaml:"), problems
    record("bad_input", group="manifest", case="a billion laughs (nine levels of nested aliases)", stage="submit",
           error=problems[0])


def test_a_self_referencing_alias_is_refused_with_its_line_not_a_recursion_error(settings):
    problems, took = _timed_problems("models: [mlp]\na: &a [*a]\n", settings)
    assert took < 2.0
    assert problems == ["m.yaml:2: a YAML alias refers to the node that contains it (a self-referencing alias); "
                        "manifests must be finite trees"]
    record("bad_input", group="manifest", case="a self-referencing alias", stage="submit", error=problems[0])


def test_aliases_that_expand_modestly_are_still_accepted(settings):
    plan = _parse("""
        defaults: &d {recipes: [dynamic-int8], backends: [fbgemm]}
        models:
          - {model: mlp, recipes: [dynamic-int8], backends: [qnnpack]}
          - model: digits_cnn
            <<: *d
    """, settings)
    assert [(r.model, r.backend) for r in plan.requests] == [("mlp", "qnnpack"), ("digits_cnn", "fbgemm")]


def test_a_manifest_over_the_size_limit_is_refused_before_it_is_parsed(tmp_path):
    small = Settings(home=tmp_path / "home", max_manifest_bytes=1000)
    text = "models:\n" + "".join(f"  - {{model: mlp, recipes: [dynamic-int8], backends: [fbgemm]}}  # {i}\n"
                                 for i in range(40))
    with pytest.raises(ManifestError, match="over the limit of 1000 bytes"):
        parse_manifest(text, settings=small, filename="m.yaml")
    f = tmp_path / "big.yaml"
    f.write_text(text)
    with pytest.raises(ManifestError, match=r"MAX_MANIFEST_BYTES") as refused:
        load_manifest(f, settings=small)
    record("bad_input", group="manifest", case="a manifest over the size limit", stage="submit",
           error=str(refused.value).splitlines()[-1].strip())


def test_a_manifest_of_32768_entries_parses_in_seconds_reading_the_registry_once(settings, monkeypatch):
    import time

    import modelpress.api as api

    reads = []
    real = api.entry_points
    monkeypatch.setattr(api, "entry_points", lambda **kw: reads.append(kw) or real(**kw))
    recipes = ["dynamic-int8", "prune50-dynamic-int8", "l1-sparse50", "static-int8"]
    entries = "".join(f"  - {{model: mlp, recipes: [{recipes[i % 4]}], backends: [{('fbgemm', 'qnnpack')[i // 4 % 2]}], "
                      f"budget: {{max_drop: 0.{i // 8:05d}1}}}}\n" for i in range(32768))
    text = "models:\n" + entries
    assert len(text) > 2_000_000
    t0 = time.perf_counter()
    plan = parse_manifest(text, settings=settings, filename="big.yaml")
    took = time.perf_counter() - t0
    assert len(plan.requests) == 32768
    assert len(reads) == 1, len(reads)
    assert took < 120, took  # generous for a loaded machine (a few seconds idle); 103 s idle before the fix
