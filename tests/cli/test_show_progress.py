"""``modelpress show`` and ``modelpress wait`` say how far a running job's long step is (issue 22 item 3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from modelpress.cli import progress_text, wait_line
from modelpress.settings import Settings

REPORT = {"step": "distill_float", "iteration": 120, "of": 600, "loss": 0.031, "validation": 0.982,
          "metric": "cosine", "elapsed_s": 41.2}
LINE = "distill_float 120/600, loss 0.0310, validation cosine 0.982, 41 s"


def _run(args, home):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPRESS_")}
    env["MODELPRESS_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "modelpress", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def _running_job_with_progress(home: Path) -> str:
    """A job as a worker leaves it mid-training: claimed, running, its latest report on the row."""
    from modelpress.commands.common import ensure_db
    from modelpress.models_db import claim_job, create_job, make_engine, make_sessionmaker, record_progress

    settings = Settings(home=home)
    ensure_db(settings)
    engine = make_engine(settings.effective_database_url)
    with make_sessionmaker(engine)() as s:
        job_id = create_job(session=s, model_name="mlp", recipe_name="distill", recipe_json="{}",
                            recipe_sha256="0" * 64, backend="fbgemm").id
        claim_job(session=s, job_id=job_id, host="h", arch="x86_64", task_id="t", stale_after_s=None, token="T")
        record_progress(session=s, job_id=job_id, token="T", progress=REPORT)
    engine.dispose()
    return job_id


def test_show_prints_a_running_jobs_progress_line_on_stderr_and_keeps_stdout_json(tmp_path):
    job_id = _running_job_with_progress(tmp_path)
    res = _run(["show", job_id[:8]], tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["progress"] == REPORT
    assert f"progress: {LINE}" in res.stderr.splitlines()


def test_show_prints_no_progress_line_once_the_job_is_finished(tmp_path):
    from modelpress.models_db import finish_job, make_engine, make_sessionmaker

    job_id = _running_job_with_progress(tmp_path)
    engine = make_engine(Settings(home=tmp_path).effective_database_url)
    with make_sessionmaker(engine)() as s:
        finish_job(session=s, job_id=job_id, status="succeeded", values={}, token="T")
    engine.dispose()
    res = _run(["show", job_id], tmp_path)
    assert res.returncode == 0 and "progress:" not in res.stderr
    assert json.loads(res.stdout)["progress"] == REPORT  # the last report stays on the row


def test_waits_one_line_shows_the_first_running_jobs_progress_and_how_many_more_report():
    rows = [{"id": "6b6984c1aaaa", "status": "running", "progress": REPORT},
            {"id": "77777777bbbb", "status": "running", "progress": {"iteration": 3}},
            {"id": "88888888cccc", "status": "running", "progress": None},
            {"id": "99999999dddd", "status": "succeeded", "progress": {"iteration": 600, "of": 600}}]
    line, done = wait_line(rows, 4)
    assert done == 1
    assert line.endswith(f"1/4 running=3 succeeded=1 | 6b6984c1 {LINE} (+1 more)")
    assert "|" not in wait_line(rows[2:], 2)[0]  # nobody running reports: the line is as before


def test_a_progress_line_names_the_known_keys_in_order_and_shows_any_other_key():
    assert progress_text(REPORT) == LINE
    assert progress_text({"validation": 0.5, "epoch": 2, "lr": 0.001}) == "validation 0.500, epoch 2, lr 0.001"
    assert progress_text({"step": "finetune", "loss": "nan"}) == "finetune, loss nan"
    assert progress_text(None) == progress_text({}) == ""
