"""Issue 9 end to end: three models no worker can import, sent by one manifest through Redis, a real fbgemm
worker and PostgreSQL; bad input refused at submit, and failed by the worker when it gets past submit.

The models are built at test time (tests/own_models_fixtures.py): an HF BERT-style classifier (folder
written by save_pretrained, JSONL data with label names), torchvision ResNet-18 (weights file, ImageFolder
data), and a ``.pt2`` of a module defined only in the fixtures (tensors by argument name).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from modelpress.cli import wait_for
from tests.conftest import settings_from_env
from tests.own_models_fixtures import (
    ACCURACY_FLOOR,
    Built,
    build_export,
    build_hf_classifier,
    build_pickle_pt2,
    build_resnet18,
    write_jsonl,
)

pytestmark = pytest.mark.slow
RESULT_COLUMNS = ("size_before_bytes", "size_after_bytes", "latency_batch_size", "latency_before_median_ms",
                  "latency_after_median_ms", "latency_before_p90_ms", "latency_after_p90_ms", "metric_name",
                  "metric_before", "metric_after", "artifact_uri", "model_sha256")
# Timing the ResNet-18 ratio needs more than the queue tests' 5 runs to be a median worth asserting on.
WORKER_ENV = {"MODELPRESS_LATENCY_WARMUP": "3", "MODELPRESS_LATENCY_RUNS": "15"}


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    root = tmp_path_factory.mktemp("own-models")
    for name in ("hf", "vision", "export"):
        (root / name).mkdir()
    return {"hf": build_hf_classifier(root / "hf"), "vision": build_resnet18(root / "vision"),
            "export": build_export(root / "export"), "root": root}  # type: ignore[dict-item]


def _rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root))


def _entry(b: Built, root: Path) -> dict:
    kind, _, target = b.model.partition(":")
    e: dict = {"model": f"{kind}:{_rel(Path(target), root)}" if kind in ("hf", "export") else b.model,
               "data": {"eval": _rel(b.eval, root)}}
    if b.calibration is not None:
        e["data"]["calibration"] = _rel(b.calibration, root)
    if b.weights is not None:
        e["weights"] = _rel(b.weights, root)
    if b.preprocess is not None:
        e["preprocess"] = b.preprocess
    return e


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelpress", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def _batch_rows(settings, batch_id: str) -> list[dict]:  # type: ignore[no-untyped-def]
    from modelpress.models_db import list_jobs, make_engine, make_sessionmaker

    engine = make_engine(settings.effective_database_url)
    try:
        with make_sessionmaker(engine)() as s:
            return [j.to_dict() for j in list_jobs(session=s, batch_id=batch_id, limit=None)]
    finally:
        engine.dispose()


def _accuracy_of_reloaded(row: dict, settings) -> float:  # type: ignore[no-untyped-def]
    """Reload the artifact as a user does and compute its held-out accuracy on the row's own data."""
    import torch

    import modelpress
    from modelpress.optimize.measure import compute_metric, predict
    from modelpress.optimize.sources import get_source
    from modelpress.worker_store import fetch_model_ref

    torch.set_num_threads(1)  # as the worker measured
    model = modelpress.load(row["artifact_uri"])
    assert not model.training
    local = fetch_model_ref(settings, row["model_ref"])
    spec = get_source(local.kind).load(local).spec
    data = spec.data()
    # Dynamic int8 quantizes activations per batch: evaluate in the batches the worker used.
    out = predict(model, data.eval_inputs, batch_size=int(spec.extra.get("eval_batch_size", 256)))
    return compute_metric("accuracy", out, labels=data.eval_labels, reference=None)


@pytest.mark.timeout(2400)
def test_one_manifest_sends_an_hf_classifier_a_resnet18_and_a_pt2_each_with_dynamic_and_static_int8(queue, own,
                                                                                                   monkeypatch):
    env, workers = queue
    settings = settings_from_env(env)
    root: Path = own["root"]  # type: ignore[assignment]
    manifest = root / "team-models.yaml"
    manifest.write_text(json.dumps({  # JSON is YAML; relative paths are taken from the manifest's folder
        "name": "own-models",
        "defaults": {"recipes": ["dynamic-int8", "static-int8"], "backends": ["fbgemm"]},
        "models": [_entry(own[k], root) for k in ("hf", "vision", "export")],
    }, indent=1))
    workers.start("fbgemm", extra_env=WORKER_ENV, wait=False)

    submitted = _cli(env, "submit", str(manifest))
    assert submitted.returncode == 0, submitted.stderr
    assert "6 jobs, 6 enqueued, 0 reused" in submitted.stderr
    batch_id = submitted.stdout.strip()
    rows = {(r["model_name"], r["recipe_name"]): r for r in _batch_rows(settings, batch_id)}
    assert set(rows) == {(m, r) for m in ("hf:intent-classifier", "torchvision:resnet18", "export:ranker.pt2")
                         for r in ("dynamic-int8", "static-int8")}
    # The rows carry store refs only: a worker needs nothing but the store.
    for r in rows.values():
        ref = r["model_ref"]
        for key in (ref.get("path"), ref.get("weights"), ref["data"]["eval"], ref["data"].get("calibration")):
            assert key is None or key.startswith("inputs/"), key
        assert r["model_sha256"] == ref["content_sha256"]
    assert rows[("hf:intent-classifier", "static-int8")]["model_ref"]["path"].endswith(".tree.json")

    workers.wait_ready("fbgemm")
    done = {(r["model_name"], r["recipe_name"]): r
            for r in wait_for(settings, [r["id"] for r in rows.values()], timeout=1800, quiet=True)}
    for (model, recipe), r in done.items():
        where = f"{model} {recipe}: {r['status']}: {r['error']}"
        assert r["status"] in ("succeeded", "rejected"), where
        assert all(r[c] is not None for c in RESULT_COLUMNS), where
        assert r["metric_name"] == "accuracy", where  # every eval file here has labels
        # Each model learned its task (chance: 1/3, 1/4, 1/5), so the int8 delta in the row means something.
        floor = ACCURACY_FLOOR[{"hf": "hf", "torchvision": "vision", "export": "export"}[model.split(":")[0]]]
        assert r["metric_before"] >= floor and r["metric_after"] >= floor - 0.1, where + f" acc {r['metric_before']}"
        assert [s["batch_size"] for s in r["measurements"]["latency_after"]] == [1, 32], where
        assert r["attempts"] == 1 and r["engine_used"] == "fbgemm", where

    # The headline: static int8 ResNet-18 at batch 32 (the row's latency is the largest batch).
    rn = done[("torchvision:resnet18", "static-int8")]
    smaller = rn["size_before_bytes"] / rn["size_after_bytes"]
    faster = rn["latency_before_median_ms"] / rn["latency_after_median_ms"]
    print(f"\nresnet18 static int8: {rn['size_before_bytes']:,} -> {rn['size_after_bytes']:,} bytes ({smaller:.2f}x), "
          f"batch {rn['latency_batch_size']}: {rn['latency_before_median_ms']:.1f} -> "
          f"{rn['latency_after_median_ms']:.1f} ms ({faster:.2f}x); accuracy {rn['metric_before']:.3f} -> "
          f"{rn['metric_after']:.3f}")
    for (model, recipe), r in sorted(done.items()):
        print(f"{model:24} {recipe:13} {r['size_before_bytes']:>11,} -> {r['size_after_bytes']:>11,}  "
              f"b{r['latency_batch_size']} {r['latency_before_median_ms']:8.2f} -> {r['latency_after_median_ms']:8.2f} ms"
              f"  acc {r['metric_before']:.3f} -> {r['metric_after']:.3f}")
    assert rn["latency_batch_size"] == 32
    assert smaller >= 3.5, smaller
    # Speed goals live in benchmarks/own_models.py (interleaved, median and p90, load noted). This machine's
    # CPU has AVX2 without VNNI: the fully int8 graph (one quantize at the input, one dequantize at the end,
    # conv-bn-relu fused, quantized add_relu) measured 2.4-3.2x faster at b32 on 64, 112 and 224 pixel inputs,
    # so here only a margin that holds under CI load is asserted.
    assert faster >= 1.5, faster

    # modelpress.load gives back each result; its accuracy on the same held-out rows is what the worker
    # measured, to the last row.
    for (model, recipe), r in done.items():
        assert _accuracy_of_reloaded(r, settings) == pytest.approx(r["metric_after"], abs=1e-9), (model, recipe)

    # On a machine that only has the store (its own home, the shared store): the HF folder the worker rebuilt
    # is gone, and modelpress.load fetches it from the store by the refs its artifact recorded.
    hf = done[("hf:intent-classifier", "dynamic-int8")]
    shutil.rmtree(settings.home / "store-cache" / "trees")
    elsewhere = root / "another-machine"
    monkeypatch.setenv("MODELPRESS_HOME", str(elsewhere))
    monkeypatch.setenv("MODELPRESS_ARTIFACT_STORE", str(settings.effective_artifact_store))
    assert _accuracy_of_reloaded(hf, settings) == pytest.approx(hf["metric_after"], abs=1e-9)
    assert (elsewhere / "store-cache" / "trees").is_dir()

    # The same files again reuse every result; another eval file is another model.
    again = _cli(env, "submit", str(manifest))
    assert again.returncode == 0 and "6 jobs, 0 enqueued, 6 reused" in again.stderr, again.stderr


@pytest.mark.timeout(1800)
def test_bad_own_models_are_refused_at_submit_or_failed_by_the_worker_while_a_good_one_succeeds(queue, own,
                                                                                                 tmp_path):
    from safetensors.torch import save_file
    import torch

    from modelpress.api import Producer
    from modelpress.intake import resolve_paths
    from modelpress.optimize.sources import parse_model_ref

    env, workers = queue
    settings = settings_from_env(env)
    workers.start("fbgemm", wait=False)
    hf, export = own["hf"], own["export"]
    marker = tmp_path / "PAYLOAD-RAN"
    (tmp_path / "evil").mkdir()
    evil = build_pickle_pt2(tmp_path / "evil", marker)
    remote = tmp_path / "remote-code"
    shutil.copytree(Path(hf.model.removeprefix("hf:")), remote)
    cfg = json.loads((remote / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForSequenceClassification": "modeling_evil.EvilModel"}
    (remote / "config.json").write_text(json.dumps(cfg))
    (remote / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w')\n")
    bad_labels = write_jsonl(tmp_path / "bad-labels.jsonl", [{"text": "goal match team", "label": 0},
                                                             {"text": "rain cloud storm", "label": 7}])
    wrong_names = tmp_path / "wrong-names.safetensors"
    save_file({"feats": torch.zeros(4, 64), "labels": torch.zeros(4, dtype=torch.long)}, str(wrong_names))
    cases = {
        "pickle payload in .pt2 weights": dict(model=evil.model, data={"eval": str(export.eval)}),
        "HF folder with auto_map": dict(model=f"hf:{remote}", data={"eval": str(hf.eval)}),
        "JSONL label outside the class count": dict(model=hf.model, data={"eval": str(bad_labels)}),
        "tensors with the wrong input names": dict(model=export.model, data={"eval": str(wrong_names)}),
    }
    named = {"pickle payload in .pt2 weights": "pickle", "HF folder with auto_map": "auto_map",
             "JSONL label outside the class count": "label 7", "tensors with the wrong input names": "feats"}

    # 1. At submit: one manifest, every problem listed at its line, nothing written.
    manifest = tmp_path / "bad.yaml"
    good_entry = {"model": export.model, "data": {"eval": str(export.eval)}}
    manifest.write_text(json.dumps({"defaults": {"recipes": ["dynamic-int8"], "backends": ["fbgemm"]},
                                    "models": [good_entry] + [{**c, "data": c["data"]} for c in cases.values()]},
                                   indent=1))
    refused = _cli(env, "submit", str(manifest))
    assert refused.returncode == 2 and "nothing was submitted" in refused.stderr, refused.stderr
    for i, (case, word) in enumerate(named.items(), start=1):
        lines = [ln for ln in refused.stderr.splitlines() if f"models[{i}]" in ln]
        assert lines and word in " ".join(lines), (case, refused.stderr)
        assert ":" in lines[0].split("models[")[0], lines  # file:line: prefix
    assert "models[0]" not in refused.stderr
    assert _cli(env, "jobs", "--format", "json").stdout.strip() == "[]"

    # 2. Past submit (a producer with other checks, an older client): the same four reach the worker in one
    # batch with a good model, and each fails naming its problem while the good one succeeds.
    producer = Producer(settings)
    try:
        reqs = [producer.validate(model=good_entry["model"], data=good_entry["data"], recipe="dynamic-int8",
                                  backend="fbgemm")]
        for c in cases.values():
            ref = resolve_paths(parse_model_ref(c["model"], data=c["data"]), "/")
            reqs.append(producer.validate(model=c["model"], recipe="dynamic-int8", backend="fbgemm", ref=ref))
        sub = producer.submit_batch(reqs, name="bad-past-submit", kind="manifest", reuse=False)
    finally:
        producer.close()
    workers.wait_ready("fbgemm")
    rows = {r["id"]: r for r in wait_for(settings, sub.job_ids, timeout=900, quiet=True)}
    good, *bad = (rows[i] for i in sub.job_ids)
    assert good["status"] == "succeeded", good["error"]
    for (case, word), r in zip(named.items(), bad):
        print(f"\n{case}: {r['status']}: {r['error']}")
        assert r["status"] == "failed" and word in (r["error"] or ""), (case, r["error"])
        assert r["attempts"] == 1, case  # bad input is not retried
    # Staged files are named by their role in the message, not only by their content key.
    assert "eval data (data.eval, " in bad[2]["error"] and "eval data (data.eval, " in bad[3]["error"]
    assert not marker.exists(), "a user's pickle or model code ran"
