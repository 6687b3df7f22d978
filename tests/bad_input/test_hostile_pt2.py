"""Hostile ``.pt2`` programs (issue 20) through the three doors: ``modelpress submit``, a real worker that gets
the file past submit, and ``modelpress.load`` of an artifact whose recorded export source became hostile.

Every archive would make torch run something of the file's (a shared library's constructor, a pickled
object, a file-creating operator): tests/optimize/sources/test_pt2_archive.py shows that torch itself does
run them. Here the marker those payloads write must never appear, while a normal archive still succeeds.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelpress.errors import ModelLoadError
from tests.faults.record import record
from tests.optimize.sources.test_pt2_archive import export_small, hostile_archives, small_data


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("hostile-pt2")
    marker = root / "PAYLOAD-RAN"
    cases = hostile_archives(root / "archives", marker)
    return {"cases": cases, "marker": marker, "good": export_small(root / "good.pt2", seed=1),
            "data": small_data(root / "eval.safetensors")}


def test_the_archives_are_small_enough_that_only_their_content_can_be_the_reason(files):
    from tests.bad_input.conftest import WORKER_MAX_WEIGHTS

    for case, (path, _) in files["cases"].items():
        assert path.stat().st_size < WORKER_MAX_WEIGHTS, case


def test_submit_refuses_each_hostile_program_in_one_line_naming_what_it_holds(files, site):
    for case, (path, named) in files["cases"].items():
        started = time.monotonic()
        out = subprocess.run([sys.executable, "-m", "modelpress", "submit", "--model", f"export:{path}",
                              "--data", f"eval={files['data']}", "--recipe", "dynamic-int8", "--backend", "fbgemm"],
                             env=site.env, capture_output=True, text=True, timeout=60)
        took = time.monotonic() - started
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2, (case, out.returncode, out.stderr)
        assert len(lines) == 1 and named in lines[0], (case, out.stderr)
        assert "Traceback" not in out.stderr and out.stdout == "", case
        assert took < 20, (case, took)
        record("bad_input", group="pt2", case=case, stage="submit", error=lines[0])
    assert site.count_rows() == 0
    assert not files["marker"].exists()


def test_a_worker_given_the_files_past_submit_fails_each_once_with_the_reason(files, site):
    from modelpress.intake import resolve_paths
    from modelpress.optimize.sources import parse_model_ref

    site.worker()
    data = {"eval": str(files["data"])}
    producer = site.producer()
    try:
        reqs = {"good": producer.validate(model=f"export:{files['good']}", data=data, recipe="dynamic-int8",
                                          backend="fbgemm")}
        for case, (path, _) in files["cases"].items():
            # ``ref=`` is a reference the caller checked itself: staged into the store as it is.
            ref = resolve_paths(parse_model_ref(f"export:{path}", data=data), "/")
            reqs[case] = producer.validate(model=f"export:{path}", recipe="dynamic-int8", backend="fbgemm", ref=ref)
        sub = producer.submit_batch(list(reqs.values()), name="hostile-pt2", kind="manifest", reuse=False)
    finally:
        producer.close()
    ids = dict(zip(reqs, sub.job_ids))
    rows = site.wait_finished(list(ids.values()), timeout=300)
    good = rows[ids["good"]]
    assert good["status"] in ("succeeded", "rejected") and good["artifact_uri"], good["error"]
    for case, (_, named) in files["cases"].items():
        row = rows[ids[case]]
        assert row["status"] == "failed" and named in (row["error"] or ""), (case, row["status"], row["error"])
        assert "\n" not in row["error"] and "Traceback" not in row["error"], (case, row["error"])
        assert row["attempts"] == 1 and row["artifact_uri"] is None, case
        record("bad_input", group="pt2", case=case, stage="worker", error=row["error"])
    assert not files["marker"].exists(), "a payload of a hostile .pt2 ran in the worker"


def test_loading_an_artifact_whose_export_source_turned_hostile_refuses_it(files, tmp_path):
    import torch

    import modelpress
    from tests.optimize.sources.conftest import ref_of, run
    from tests.own_models_fixtures import Built

    source = tmp_path / "program.pt2"
    shutil.copyfile(files["good"], source)
    built = Built(model=f"export:{source}", eval=files["data"])
    r = run(ref_of(built), "dynamic-int8", tmp_path / "store")
    x = torch.randn(4, 8)
    assert modelpress.load(r.artifact_path)(x).shape == (4, 3)  # the control: it reloads while the file is good
    for case, (path, named) in files["cases"].items():
        shutil.copyfile(path, source)  # what the artifact's manifest records is now this file
        with pytest.raises(ModelLoadError) as e:
            modelpress.load(r.artifact_path)
        assert named in str(e.value), (case, str(e.value))
        record("bad_input", group="pt2", case=case, stage="load", error=str(e.value))
    assert not files["marker"].exists()
