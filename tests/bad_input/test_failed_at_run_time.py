"""What only a worker can find out fails the job with the reason, once, through a real worker; the next job runs.

Rows are also written directly (``site.insert_and_publish``), past every submit-time check, as another
producer, a manifest tool or a tampered database could: the worker must not trust the row either.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from modelpress.reconcile import reconcile_once
from modelpress.store import ArtifactStore
from tests.bad_input.test_refused_at_submit import QUICK, RunsCode
from tests.faults.models import Tiny
from tests.faults.record import record


def _save(path: Path, state: dict[str, torch.Tensor]) -> str:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return str(path)


def _submit_all(site, weights: dict[str, str]) -> dict[str, str]:
    producer = site.producer()
    try:
        return {name: producer.submit(model=QUICK, recipe="dynamic-int8", backend="fbgemm", weights=w)
                for name, w in weights.items()}
    finally:
        producer.close()


def test_weights_that_pass_submit_but_are_unsafe_or_wrong_fail_in_the_worker_with_the_reason(site, tmp_path):
    site.worker()
    marker = tmp_path / "pickle-payload-ran"
    good = Tiny().state_dict()
    nan = {**good, "fc1.weight": good["fc1.weight"].clone().fill_(float("nan"))}
    inf = {**good, "fc2.bias": torch.full_like(good["fc2.bias"], float("inf"))}
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps({"fc1.weight": RunsCode(marker)}, protocol=2))
    padded = {**good, "padding": torch.zeros(40_000)}  # ~160 KB: under the producer's 1 MiB, over the worker's 64 KiB
    evil = tmp_path / "evil.pt"
    torch.save({"fc1.weight": RunsCode(marker)}, evil)  # a valid torch.save zip whose pickle calls os.system

    ids = _submit_all(site, {
        "code in a torch.save zip": str(evil),
        "code in a legacy pickle": str(legacy),
        "NaN weights": _save(tmp_path / "nan.safetensors", nan),
        "Inf weights": _save(tmp_path / "inf.pt", inf),
        "wrong shapes": _save(tmp_path / "shape.safetensors", {**good, "fc1.weight": torch.zeros(3, 3)}),
        "missing and extra keys": _save(tmp_path / "keys.pt", {"encoder.weight": torch.zeros(4)}),
        "over the worker's size limit": _save(tmp_path / "padded.pt", padded),
        "not a state dict": _save(tmp_path / "list.pt", [torch.zeros(2)]),  # type: ignore[arg-type]
        "good": _save(tmp_path / "good.safetensors", good),
    })
    rows = site.wait_finished(list(ids.values()))
    by = {name: rows[job] for name, job in ids.items()}

    expected = {
        "code in a torch.save zip": r"was refused: it holds code, not only tensors \(it tries to load posix\.system\); "
                                    r"re-save it as safetensors or as a plain state dict",
        "code in a legacy pickle": r"was refused: it holds code, not only tensors",
        "NaN weights": r"weights contain NaN or Inf in fc1\.weight",
        "Inf weights": r"weights contain NaN or Inf in fc2\.bias",
        "wrong shapes": r"do not fit the architecture: .*size mismatch for fc1\.weight",
        "missing and extra keys": r"do not fit the architecture: .*Missing key",
        "over the worker's size limit": r"over the limit of 65536 bytes",
        "not a state dict": r"does not hold a state dict of tensors",
    }
    for name, pattern in expected.items():
        row = by[name]
        assert row["status"] == "failed" and re.search(pattern, row["error"] or ""), (name, row["status"], row["error"])
        assert row["attempts"] == 1, name  # bad input is never retried
        assert row["artifact_uri"] is None, name
    for name in ("code in a torch.save zip", "code in a legacy pickle"):
        assert "weights_only" not in by[name]["error"], by[name]["error"]  # never torch's advice to turn it off
    # The good job ran to a result (rejected or not is its 1 % default budget's verdict on a 64-row eval).
    assert by["good"]["status"] in ("succeeded", "rejected") and by["good"]["artifact_uri"], by["good"]["error"]
    assert not marker.exists(), "the pickled payload ran in a worker"
    for name in expected:
        record("bad_input", group="weights", case=name, stage="worker", error=by[name]["error"])


def test_rows_naming_factories_the_worker_does_not_allow_fail_without_importing_them(site):
    site.worker()
    evil = site.insert_and_publish(model_name="tests.bad_input.evil_factory:spec")
    unknown = site.insert_and_publish(model_name="resnet9000")
    relative = site.insert_and_publish(model_name="tests.faults.models.nope:spec")
    rows = site.wait_finished([evil, unknown, relative])

    assert rows[evil]["status"] == "failed"
    assert "is not allowed: its module is outside MODELPRESS_FACTORY_ALLOWLIST (tests.faults.models)" in rows[evil]["error"]
    assert not Path(site.env["MP_EVIL_MARKER"]).exists(), "the refused factory's module was imported"
    assert "unknown model 'resnet9000'" in rows[unknown]["error"]
    assert "could not be imported" in rows[relative]["error"]
    assert all(r["attempts"] == 1 for r in rows.values())
    for name, job in (("a factory the worker does not allow-list", evil), ("an unknown model", unknown),
                      ("an allow-listed module that does not exist", relative)):
        record("bad_input", group="name", case=name, stage="worker", error=rows[job]["error"])


def test_the_evil_factory_does_run_code_when_imported_so_the_absence_of_its_marker_means_something(tmp_path):
    import os
    import subprocess
    import sys

    marker = tmp_path / "imported"
    from tests.conftest import ROOT

    subprocess.run([sys.executable, "-c", "import tests.bad_input.evil_factory"], cwd=ROOT, timeout=60, check=True,
                   env={**os.environ, "MP_EVIL_MARKER": str(marker), "PYTHONPATH": str(ROOT)})
    assert marker.exists()


def test_rows_whose_weights_uri_leaves_the_artifact_store_fail_and_nothing_outside_is_read(site, tmp_path):
    site.worker()
    outside = tmp_path / "outside.pt"
    torch.save(Tiny().state_dict(), outside)  # valid weights: only where they live is wrong
    store = Path(site.settings.effective_artifact_store)
    uris = {
        "an absolute path elsewhere": str(outside),
        "dot-dot out of the store": f"{store}/inputs/../../{outside.name}",
        "a relative dot-dot key": "inputs/../../../etc/passwd",
        "another scheme": "s3://someone-else/weights.pt",
        "file URL elsewhere": f"file://{outside}",
        "a hidden temp-file key": "inputs/.tmp-upload.part",
    }
    ids = {name: site.insert_and_publish(model_weights_uri=uri, model_sha256="0" * 64) for name, uri in uris.items()}
    rows = site.wait_finished(list(ids.values()))
    for name, job in ids.items():
        row = rows[job]
        assert row["status"] == "failed", (name, row["status"])
        assert re.search(r"outside the artifact store|not allowed|another scheme|not in the artifact store",
                         row["error"] or ""), (name, row["error"])
        assert row["attempts"] == 1
        record("bad_input", group="store", case=f"weights URI: {name}", stage="worker", error=row["error"])


def test_weights_changed_in_the_store_after_submit_fail_their_hash_check(site, tmp_path):
    site.worker()
    src = tmp_path / "w.pt"
    torch.save(Tiny().state_dict(), src)
    obj = ArtifactStore.from_settings(site.settings).put_file(src, prefix="inputs")
    staged = Path(obj.uri)
    staged.write_bytes(staged.read_bytes()[:-10])  # truncated after it was stored
    job = site.insert_and_publish(model_weights_uri=obj.uri, model_sha256=obj.sha256)
    (row,) = site.wait_finished([job]).values()
    assert row["status"] == "failed"
    assert "changed or truncated after it was stored" in row["error"]
    record("bad_input", group="weights", case="weights truncated in the store after submit", stage="worker",
           error=row["error"])


def test_a_row_with_a_malformed_recipe_fails_in_the_worker_naming_the_field(site):
    site.worker()
    bad_field = site.insert_and_publish(recipe_json='{"name":"r","steps":[{"type":"quantize_dynamic","bogus":1}]}')
    not_json = site.insert_and_publish(recipe_json='{"name": "r", "steps": [')
    rows = site.wait_finished([bad_field, not_json])
    assert "steps.0.bogus" in rows[bad_field]["error"]
    assert "not valid JSON" in rows[not_json]["error"]
    assert all(r["status"] == "failed" and r["attempts"] == 1 for r in rows.values())
    record("bad_input", group="recipe", case="an unknown step field in a stored row", stage="worker",
           error=rows[bad_field]["error"])
    record("bad_input", group="recipe", case="recipe JSON cut short in a stored row", stage="worker",
           error=rows[not_json]["error"])


def test_a_row_for_a_backend_with_no_queue_is_failed_by_the_reconciler_not_left_queued(site):
    from modelpress.models_db import create_job, make_engine, make_sessionmaker

    engine = make_engine(site.settings.effective_database_url)
    try:
        with make_sessionmaker(engine)() as s:
            job = create_job(session=s, model_name=QUICK, recipe_name="r", recipe_json="{}", recipe_sha256="0" * 64,
                             backend="tpu").id
    finally:
        engine.dispose()
    summary = reconcile_once(site.settings.model_copy(update={"reconcile_queued_grace": 0.001}))
    assert job in summary.failed_unroutable
    (row,) = site.wait_finished([job], timeout=5).values()
    assert row["status"] == "failed" and "unknown backend 'tpu'" in row["error"]
    record("bad_input", group="name", case="a stored row for a backend with no queue", stage="reconciler",
           error=row["error"])
