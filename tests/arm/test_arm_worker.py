"""The ARM half of the pipeline on a real aarch64 process: ``tools/arm-worker`` under user-mode QEMU (issue 12).

The module provisions the aarch64 environment itself (``tools/arm-worker build``: minutes the first time,
seconds once cached under /var/cache/modelpress-arm). A build that cannot finish (no registry, no disk)
FAILS here with the reason; nothing is skipped. Emulation is 300-500x slower than native, so the jobs
are the small zoo models with few timing runs, and their latencies are only checked to be *flagged*.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, settings_from_env

TOOL = ROOT / "tools" / "arm-worker"
# Budgets make "the metric stayed within budget" a real check; fallback off keeps emulated jobs short.
DYNAMIC = {"name": "arm-dynamic-int8", "steps": [{"type": "quantize_dynamic"}],
           "budget": {"max_drop": 0.05, "max_float_layers": 0}}
STATIC = {"name": "arm-static-int8", "steps": [{"type": "quantize_static"}],
          "budget": {"max_drop": 0.02, "max_float_layers": 0}}
# job key -> (model, recipe). "export" is a model given by its files (issue 9): a .pt2 of a module defined only
# in this test, staged into the store of the worker that runs it and fetched from there (no worker has its class).
JOBS = {"mlp": ("mlp", DYNAMIC), "digits_cnn": ("digits_cnn", STATIC),
        "own-dynamic": ("export", DYNAMIC), "own-static": ("export", STATIC)}
EMULATED_ENV = {
    "MODELPRESS_LATENCY_WARMUP": "1", "MODELPRESS_LATENCY_RUNS": "3",
    # An emulated job's heartbeat can lag by seconds; 10 s (the queue fixture's) would call it lost.
    "MODELPRESS_HEARTBEAT_INTERVAL": "5", "MODELPRESS_HEARTBEAT_STALE_AFTER": "600",
}
# Runs inside the chroot: reload the aarch64 artifacts there and record their outputs (safetensors, no pickle).
ARM_PROBE = """
import sys, torch, modelpress
from safetensors.torch import load_file, save_file
for art, inp, out in zip(*[iter(sys.argv[1:])] * 3):
    m = modelpress.load(art, engine="qnnpack")
    with torch.inference_mode():
        save_file({"y": m(load_file(inp)["x"]).contiguous()}, out)
print("probe done on", __import__("platform").machine())
"""


def _tool(*args: str, timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TOOL), *args], capture_output=True, text=True, timeout=timeout,
                          env=env if env is not None else os.environ.copy())


@pytest.fixture(scope="module")
def arm_build() -> float:
    """Provision (or reuse) the aarch64 environment; returns the seconds it took."""
    t0 = time.monotonic()
    try:
        done = _tool("build", timeout=3300)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"tools/arm-worker build did not finish in {e.timeout:.0f} s:\n{(e.stderr or '')[-3000:]}")
    if done.returncode != 0:
        pytest.fail(f"tools/arm-worker build failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    # The smoke check (torch on aarch64, engine qnnpack) runs after every (re)install; the jobs below prove the rest.
    assert "ready: " in done.stderr, done.stderr[-3000:]
    return time.monotonic() - t0


def _rows(settings, ids: list[str]) -> dict[str, dict]:
    from modelpress.models_db import list_jobs, make_engine, make_sessionmaker

    engine = make_engine(settings.effective_database_url)
    try:
        with make_sessionmaker(engine)() as s:
            return {j.id: j.to_dict() for j in list_jobs(session=s, ids=ids, limit=None)}
    finally:
        engine.dispose()


def _submit(settings, own: dict, timeout: float) -> dict[str, dict]:
    """The qnnpack jobs, fresh (no reuse), waited for; returns {job key: row}.

    ``settings`` names the store of the worker that will run them: the own model's files are staged there.
    """
    from modelpress.api import Producer
    from modelpress.cli import wait_for
    from modelpress.optimize import Recipe

    producer = Producer(settings)
    try:
        ids = {key: producer.submit(**(own if model == "export" else {"model": model}), recipe=Recipe.from_dict(r),
                                    backend="qnnpack")
               for key, (model, r) in JOBS.items()}
    finally:
        producer.close()
    wait_for(settings, list(ids.values()), timeout=timeout, quiet=True)
    rows = _rows(settings, list(ids.values()))
    return {k: rows[i] for k, i in ids.items()}


def _build_own_export(root: Path) -> dict:
    """A ``.pt2`` of a module defined only here, with eval (labels) and calibration files; ``submit``'s fields.

    Tiny on purpose: every emulated second is ~400 native ones, and the point is the path, not the model.
    """
    from safetensors.torch import save_file
    from torch import nn

    class TinyScorer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # 256 hidden units (5.4k weights): small enough to cost seconds emulated, big enough that int8
            # weights outweigh the archive's fixed overhead (at 64 units the static int8 file was larger).
            self.hidden = nn.Linear(16, 256)
            self.out = nn.Linear(256, 4)

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return self.out(torch.relu(self.hidden(features)))

    g = torch.Generator().manual_seed(12)
    x = torch.randn(448, 16, generator=g)
    y = (x @ torch.randn(16, 4, generator=g)).argmax(1)  # labels the float model learns to mostly get right
    torch.manual_seed(12)
    model = TinyScorer()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = nn.functional.cross_entropy(model(x[:256]), y[:256])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(model, (x[:2],), dynamic_shapes={"features": {0: batch}})
    torch.export.save(program, str(root / "tiny-scorer.pt2"))
    # Rows 256.. were never trained on; calibration and the reported metric use disjoint ones.
    save_file({"features": x[256:320].contiguous()}, str(root / "tiny-calib.safetensors"))
    save_file({"features": x[320:].contiguous(), "labels": y[320:].contiguous()}, str(root / "tiny-eval.safetensors"))
    return {"model": f"export:{root / 'tiny-scorer.pt2'}", "latency_batches": (1, 8),
            "data": {"eval": str(root / "tiny-eval.safetensors"), "calibration": str(root / "tiny-calib.safetensors")}}


def _probe_inputs(model: str, own: dict) -> torch.Tensor:
    """Held-out rows, as the metric uses."""
    from modelpress.optimize.sources.registered import resolve_model
    from safetensors.torch import load_file

    if model == "export":
        return load_file(own["data"]["eval"])["features"]
    return resolve_model(model).data().eval_inputs[:128].contiguous()


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_qnnpack_jobs_run_on_aarch64_flagged_emulated_and_their_artifacts_reload_on_x86_with_the_same_outputs(
        arm_build, queue, tmp_path, record_property):
    import modelpress
    from modelpress.cli import jobs_table
    from modelpress.report import render_html, render_table, rows_from_jobs
    from safetensors.torch import load_file, save_file

    env, workers = queue
    record_property("arm_build_seconds", round(arm_build, 1))
    x86_store, arm_store = tmp_path / "store-x86", tmp_path / "store-arm"
    (tmp_path / "own").mkdir()
    own = _build_own_export(tmp_path / "own")

    # 1. The same jobs on an x86 qnnpack worker, each worker with a store of its own: a shared one would
    #    answer the second run from the first one's result (the cache key has no architecture in it).
    #    Submitting with the worker's store stages the own model's files where that worker fetches them.
    t0 = time.monotonic()
    x86_env = {**env, "MODELPRESS_ARTIFACT_STORE": str(x86_store), **EMULATED_ENV}
    workers.start("qnnpack", name="x86", extra_env={"MODELPRESS_ARTIFACT_STORE": str(x86_store), **EMULATED_ENV})
    x86 = _submit(settings_from_env(x86_env), own, timeout=600)
    workers.stop("x86")
    record_property("x86_jobs_seconds", round(time.monotonic() - t0, 1))
    # Checked before the emulated run: a job that cannot succeed natively would only waste its minutes.
    for key, row in x86.items():
        assert row["status"] == "succeeded", f"{key} on x86: {row['status']} {row['error']}"
        assert row["worker_arch"] == "x86_64" and row["engine_used"] == "qnnpack" and row["emulated"] is None
        assert row["metric_before"] - row["metric_after"] <= JOBS[key][1]["budget"]["max_drop"], (key, row)
        assert row["size_after_bytes"] < row["size_before_bytes"], (key, row["size_before_bytes"], row["size_after_bytes"])
    assert x86["own-static"]["model_ref"]["path"].startswith("inputs/")  # staged: the row names store keys

    # Both sides start from byte-identical float weights: the digits CNN's trained weights are cached in
    # the store, as they would be in a store both workers share (training it emulated takes far longer).
    (arm_store / "builtin").mkdir(parents=True)
    for f in (x86_store / "builtin").iterdir():
        shutil.copy2(f, arm_store / "builtin" / f.name)

    # 2. The aarch64 worker: tools/arm-worker execs into the emulated `modelpress worker`, so this pid *is*
    #    the worker and the Workers fixture stops it (SIGTERM, then its process group). The store is
    #    bind-mounted at the same path inside the chroot, so the emulated worker fetches the staged .pt2
    #    and data from it exactly as a worker on another machine would.
    t0 = time.monotonic()
    arm_env = {**env, "MODELPRESS_ARTIFACT_STORE": str(arm_store), **EMULATED_ENV}
    with open(tmp_path / "worker-arm.log", "ab") as log:
        workers.procs["arm"] = subprocess.Popen([str(TOOL), "worker", "--backend", "qnnpack", "--concurrency", "1"],
                                                env=arm_env, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)
    try:
        workers.wait_ready("arm", timeout=900)
        record_property("arm_worker_ready_seconds", round(time.monotonic() - t0, 1))
        t1 = time.monotonic()
        arm = _submit(settings_from_env(arm_env), own, timeout=2400)
        record_property("arm_jobs_seconds", round(time.monotonic() - t1, 1))
        workers.stop("arm", timeout=120)
    finally:
        if "arm" in workers.procs:
            workers.stop("arm", timeout=60)
        _tool("cleanup", timeout=120)

    log_text = (tmp_path / "worker-arm.log").read_text(errors="replace")
    for key, row in arm.items():
        assert row["status"] == "succeeded", f"{key} on aarch64: {row['status']} {row['error']}\n{log_text[-3000:]}"
        assert row["worker_arch"] == "aarch64", row["worker_arch"]
        assert row["engine_used"] == "qnnpack"
        assert row["emulated"] == "qemu-user"
        assert row["measurements"]["arch"] == "aarch64"
        assert not row["reused"] and not row["measurements"].get("reused")
        budget = JOBS[key][1]["budget"]["max_drop"]
        assert row["metric_before"] - row["metric_after"] <= budget, (key, row["metric_before"], row["metric_after"])
        assert row["latency_after_median_ms"] > 0  # recorded (and flagged), never compared
        assert row["size_after_bytes"] < row["size_before_bytes"], (key, row["size_before_bytes"], row["size_after_bytes"])
        assert row["artifact_uri"].startswith(str(arm_store)) and Path(row["artifact_uri"]).is_file()
        # Same job, same float weights, same held-out data: the float metric agrees exactly across CPUs
        # up to float rounding; the int8 one within the budget.
        assert abs(row["metric_before"] - x86[key]["metric_before"]) < 1e-3, key
        assert abs(row["metric_after"] - x86[key]["metric_after"]) <= budget, key
    # The own model reached the emulated worker through its store only: staged there, not on the x86 one's.
    assert arm["own-static"]["model_ref"] == x86["own-static"]["model_ref"]  # same content, same keys
    assert (arm_store / arm["own-static"]["model_ref"]["path"]).is_file()
    assert arm["own-static"]["measurements"]["latency_after"][0]["batch_size"] == 1

    # 3. The aarch64 artifacts reload on x86 (engine qnnpack) and give the outputs they give on aarch64.
    probe_args = []
    for key, row in arm.items():
        save_file({"x": _probe_inputs(JOBS[key][0], own)}, str(tmp_path / f"{key}-in.safetensors"))
        probe_args += [row["artifact_uri"], str(tmp_path / f"{key}-in.safetensors"),
                       str(tmp_path / f"{key}-arm-out.safetensors")]
    (tmp_path / "probe.py").write_text(ARM_PROBE)
    # The own model's artifact is rebuilt from the .pt2 the worker fetched into MODELPRESS_HOME's cache (or,
    # were it gone, from the store): both are bound into the chroot at the same paths.
    done = _tool("exec", "--", "python3", str(tmp_path / "probe.py"), *probe_args, timeout=1200,
                 env={**os.environ, "MODELPRESS_HOME": str(tmp_path), "MODELPRESS_ARTIFACT_STORE": str(arm_store)})
    assert done.returncode == 0 and "probe done on aarch64" in done.stdout, done.stderr[-3000:]
    previous_engine = torch.backends.quantized.engine
    try:
        for key, row in arm.items():
            y_arm = load_file(str(tmp_path / f"{key}-arm-out.safetensors"))["y"]
            with torch.inference_mode():
                y_x86 = modelpress.load(row["artifact_uri"], engine="qnnpack")(_probe_inputs(JOBS[key][0], own))
            spread = float(y_arm.max() - y_arm.min())
            worst = float((y_x86 - y_arm).abs().max())
            agree = float((y_x86.argmax(1) == y_arm.argmax(1)).float().mean())
            record_property(f"{key}_x86_vs_arm_max_abs_diff_over_range", round(worst / spread, 5))
            print(f"\n{key:12} aarch64: {row['size_before_bytes']:,} -> {row['size_after_bytes']:,} bytes, "
                  f"{row['metric_name']} {row['metric_before']:.4f} -> {row['metric_after']:.4f} "
                  f"(x86 {x86[key]['metric_after']:.4f}); emulated b{row['latency_batch_size']} "
                  f"{row['latency_after_median_ms']:.1f} ms; x86 vs aarch64 outputs: max |diff| {worst:.3g}")
            # Quantization tolerance: a few output quantization steps (1/255 of the range each).
            assert worst <= 0.02 * spread, (key, worst, spread)
            assert agree >= 0.98, (key, agree)
    finally:
        torch.backends.quantized.engine = previous_engine

    # 4. Every report says which rows were emulated, and gives them no speed ratio.
    rows = list(arm.values()) + list(x86.values())
    table = render_table(rows_from_jobs(rows))
    assert table.count("qnnpack (aarch64, emulated)") == len(arm) and "emulated CPU" in table
    assert "emulated" in jobs_table(rows) and "aarch64 (emulated: qemu-user)" in jobs_table(rows)
    html = render_html(rows_from_jobs(rows), title="arm")
    # One note per model (the own model's two recipes share one).
    assert "b-emulated" in html and html.count("Not plotted: ") == 3
    assert "Not plotted: 2 emulated job(s)" in html
    for r in rows_from_jobs(rows):
        assert (r.speedup(max(r.batch_sizes)) is None) == bool(r.emulated)  # 64 for the zoo, 8 for the own model


@pytest.mark.timeout(3600)  # includes the build when this test runs alone on a cold cache
def test_cleanup_stops_what_a_killed_run_left_in_the_rootfs_and_no_mount_reaches_the_host(arm_build, tmp_path):
    rootfs = _tool("rootfs", timeout=60).stdout.strip()
    assert rootfs and Path(rootfs, "usr/bin/python3").exists(), rootfs
    # A shell in the chroot that leaves a background child behind, then is SIGKILLed (as a crashed parent).
    proc = subprocess.Popen([str(TOOL), "exec", "--", "bash", "-c", "sleep 600 & echo started; wait"],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
        in_rootfs = _pids_rooted_at(rootfs)
        assert proc.pid in in_rootfs and len(in_rootfs) >= 2, in_rootfs
        # The mounts live in the run's private namespace: the host's table never shows them.
        assert rootfs not in Path("/proc/mounts").read_text()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        assert _pids_rooted_at(rootfs), "the orphaned child should still be running before cleanup"
        done = _tool("cleanup", timeout=120)
        assert done.returncode == 0, done.stderr
        assert _pids_rooted_at(rootfs) == set()
        assert rootfs not in Path("/proc/mounts").read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        _tool("cleanup", timeout=120)


def _pids_rooted_at(rootfs: str) -> set[int]:
    out = set()
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if os.readlink(p / "root") == rootfs:
                    out.add(int(p.name))
            except OSError:
                pass
    return out
