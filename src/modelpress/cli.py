"""``modelpress`` command line. Imports no torch: the worker children and ``report`` do that.

Example:
    $ modelpress demo
    $ modelpress submit --model mlp --recipe dynamic-int8 --backend fbgemm
    $ modelpress worker --backend fbgemm
    $ modelpress jobs --format json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from modelpress.commands.common import (  # noqa: F401 - re-exported: callers use cli.*
    EXAMPLE_PASSWORDS_HELP,
    ensure_db,
    refuse_or_warn,
)
from modelpress.settings import BACKENDS, Settings, native_backend

# What modelpress is for, in one table: the digits CNN int8 (static, and pruned + fine-tuned + int8: smaller and
# faster at the same accuracy), the MLP's 50 % unstructured pruning that its budget rejects (with the reason),
# and one job on the other backend (routing by target). (model, recipe) pairs on the first backend.
DEMO_JOBS = (("digits_cnn", "static-int8"), ("digits_cnn", "prune50-finetune-static-int8"),
             ("mlp", "prune50-dynamic-int8"))
DEMO_OTHER_BACKEND_JOB = ("digits_cnn", "dynamic-int8")


# ------------------------------------------------------------------------------- helpers

def _fmt_bytes(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}x"


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def jobs_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of job rows (sizes in bytes, latency at the recorded batch size)."""
    head = ["job", "model", "recipe", "backend", "status", "bytes before", "bytes after", "smaller",
            "batch", "ms before", "ms after", "faster", "metric", "before", "after", "engine", "host", "runtime"]
    any_arch = any(r.get("emulated") for r in rows)
    if any_arch:
        head.append("cpu")
    body = []
    for r in rows:
        # An emulated worker's latencies (tools/arm-worker) are marked "*" and get no speed ratio: they
        # show the path runs, not how fast, and must never be read against native rows.
        emu = "*" if r.get("emulated") else ""
        body.append([
            r["id"][:8], r["model_name"], r["recipe_name"], r["backend"], r["status"] + (" (reused)" if r.get("reused") else ""),
            _fmt_bytes(r["size_before_bytes"]), _fmt_bytes(r["size_after_bytes"]),
            _ratio(r["size_before_bytes"], r["size_after_bytes"]),
            str(r["latency_batch_size"] or "-"), _num(r["latency_before_median_ms"]) + emu,
            _num(r["latency_after_median_ms"]) + emu,
            "emulated" if emu else _ratio(r["latency_before_median_ms"], r["latency_after_median_ms"]),
            r["metric_name"] or "-", _num(r["metric_before"], ".4f"), _num(r["metric_after"], ".4f"),
            r["engine_used"] or "-", r["worker_host"] or "-", r.get("runtime") or "-",
        ] + ([_arch(r)] if any_arch else []))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(head, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in body]
    errors = [f"  {r['id'][:8]}: {r['error']}" for r in rows if r.get("error")]
    if any_arch:
        from modelpress.report import EMULATED_NOTE

        errors.append(f"  * {EMULATED_NOTE}")
    if errors:
        lines += ["", "notes:"] + errors
    return "\n".join(lines)


def _arch(r: dict[str, Any]) -> str:
    arch = r.get("worker_arch") or "-"
    return f"{arch} (emulated: {r['emulated']})" if r.get("emulated") else arch


def _producer(settings: Settings):  # type: ignore[no-untyped-def]
    from modelpress.api import Producer

    ensure_db(settings)
    return Producer(settings)


def _rows(settings: Settings, **filters: Any) -> list[dict[str, Any]]:
    from modelpress.models_db import list_jobs, make_engine, make_sessionmaker

    eng = make_engine(settings.effective_database_url)
    try:
        with make_sessionmaker(eng)() as s:
            return [j.to_dict() for j in list_jobs(session=s, **filters)]
    finally:
        eng.dispose()


def progress_text(progress: dict[str, Any] | None) -> str:
    """One line from a job's latest progress report (the row's ``progress``), as ``show`` and ``wait`` print it.

    Known keys first, in this order: ``step``, ``iteration``/``of``, ``loss``, ``validation`` (named by
    ``metric`` when the report gives it), then any other key as ``key value``, then ``elapsed_s``.

    Example:
        >>> progress_text({"step": "distill_float", "iteration": 120, "of": 600, "loss": 0.031,
        ...                "validation": 0.982, "metric": "cosine", "elapsed_s": 41.2})
        'distill_float 120/600, loss 0.0310, validation cosine 0.982, 41 s'
        >>> progress_text({"step": "finetune", "iteration": 3, "loss": "nan", "epoch": 2})
        'finetune 3, loss nan, epoch 2'
    """
    if not progress:
        return ""
    p = dict(progress)

    def num(v: Any, fmt: str) -> str:
        return format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)

    head = " ".join(str(x) for x in (p.pop("step", None), _of(p.pop("iteration", None), p.pop("of", None)))
                    if x not in (None, ""))
    parts = [head] if head else []
    if "loss" in p:
        parts.append(f"loss {num(p.pop('loss'), '.4f')}")
    metric = p.pop("metric", None)
    if "validation" in p:
        parts.append(f"validation {f'{metric} ' if metric else ''}{num(p.pop('validation'), '.3f')}")
    elapsed = p.pop("elapsed_s", None)
    parts += [f"{k} {num(v, 'g')}" for k, v in p.items()]
    if elapsed is not None:
        parts.append(f"{num(elapsed, '.0f')} s")
    return ", ".join(parts)


def _of(iteration: Any, total: Any) -> str | None:
    if iteration is None:
        return None
    return f"{iteration}/{total}" if total is not None else str(iteration)


def wait_line(rows: Sequence[dict[str, Any]], total: int) -> tuple[str, int]:
    """``wait``'s one-line progress: a bar, counts by status, and the first running job's progress report.

    Example:
        >>> wait_line([{"id": "6b6984c1ffff", "status": "running", "progress": {"step": "distill", "iteration": 5,
        ...             "of": 50}}, {"id": "aa", "status": "succeeded"}], 2)[0]
        '[###############               ] 1/2 running=1 succeeded=1 | 6b6984c1 distill 5/50'
    """
    from modelpress.models_db import FINISHED

    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    done = sum(counts.get(s, 0) for s in FINISHED)
    bar = "#" * int(30 * done / max(1, total))
    line = f"[{bar:<30}] {done}/{total} " + " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    # One job's report keeps it one line; a long training step is what makes people watch the bar at all.
    reporting = [r for r in rows if r["status"] == "running" and r.get("progress")]
    if reporting:
        more = f" (+{len(reporting) - 1} more)" if len(reporting) > 1 else ""
        line += f" | {reporting[0]['id'][:8]} {progress_text(reporting[0]['progress'])}{more}"
    return line, done


def wait_for(settings: Settings, ids: list[str], *, timeout: float, quiet: bool = False) -> list[dict[str, Any]]:
    """Poll the job table until every job is finished; print a one-line progress as it goes."""
    deadline = time.monotonic() + timeout
    while True:
        rows = _rows(settings, ids=ids, limit=None)
        line, done = wait_line(rows, len(ids))
        if not quiet and sys.stderr.isatty():
            # \x1b[K clears what a longer previous line left (a progress report changes length).
            sys.stderr.write("\r" + line + "\x1b[K")
            sys.stderr.flush()
        if done == len(ids):
            if not quiet and sys.stderr.isatty():
                sys.stderr.write("\n")
            return rows
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(ids) - done} of {len(ids)} jobs not finished after {timeout:.0f} s")
        time.sleep(0.5)


def start_worker_process(settings_env: dict[str, str], backend: str, log_path: Path,
                         concurrency: int = 1) -> subprocess.Popen[bytes]:
    """Start ``modelpress worker`` as a real OS process (its own Celery parent and prefork children)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # The demo's workers share its embedded broker and database on purpose: say so (--embedded).
    embedded = ["--embedded"] if not (settings_env.get("MODELPRESS_BROKER_URL")
                                      and settings_env.get("MODELPRESS_DATABASE_URL")) else []
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "modelpress", "worker", "--backend", backend, "--concurrency", str(concurrency),
             *embedded],
            env=settings_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )


def stop_worker_process(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # warm shutdown: finish the current job
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ------------------------------------------------------------------------------- commands
def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    ensure_db(settings)
    backends = args.backends.split(",")
    print(f"modelpress demo: broker {settings.redacted()['broker_url']}, database {settings.redacted()['database_url']}")
    print(f"starting {len(backends)} worker process(es): {', '.join(backends)}; logs in {settings.home / 'logs'}")
    env = {**os.environ, "MODELPRESS_HOME": str(settings.home)}
    procs = [start_worker_process(env, b, settings.home / "logs" / f"worker-{b}.log") for b in backends]
    try:
        producer = _producer(settings)
        pairs = [tuple(j.split(":", 1)) for j in args.jobs.split(",")]
        bad = [":".join(p) for p in pairs if len(p) != 2]
        if bad:
            print(f"error: --jobs takes model:recipe pairs, got {', '.join(bad)}", file=sys.stderr)
            return 2
        reqs = [producer.validate(model=m, recipe=r, backend=backends[0]) for m, r in pairs]
        # One job for every other backend too, so the table shows routing by target backend.
        reqs += [producer.validate(model=DEMO_OTHER_BACKEND_JOB[0], recipe=DEMO_OTHER_BACKEND_JOB[1], backend=b)
                 for b in backends[1:]]
        ids = producer.submit_many(reqs, batch_name="demo")
        producer.close()
        print(f"submitted {len(ids)} jobs; waiting for the workers")
        rows = wait_for(settings, ids, timeout=args.timeout)
    finally:
        for p in procs:
            stop_worker_process(p)
    print(jobs_table(rows))
    print("\nsizes are bytes of the saved artifact files; latency is the median of "
          f"{settings.latency_runs} timed runs after {settings.latency_warmup} warm-up runs, float and result timed "
          f"in alternating rounds once the result was chosen, {settings.worker_threads} thread(s); `modelpress show JOB` has p90, batch 1 and every other number.")
    print("rejected = the result broke its recipe's accuracy budget (built-in recipes allow a 1 % drop unless they "
          "say otherwise); its artifact is kept under rejected/, never promoted, and the reason is in the notes.")
    return 0 if all(r["status"] in ("succeeded", "rejected") for r in rows) else 1


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    from modelpress.errors import UserInputError

    producer = _producer(settings)
    try:
        if args.manifest:
            from modelpress.manifest import submit_manifest

            return submit_manifest(producer, args.manifest, force=args.force)
        missing = [f"--{n}" for n in ("model", "recipe", "backend") if getattr(args, n) is None]
        if missing:
            print(f"error: {', '.join(missing)} required (or give a manifest file)", file=sys.stderr)
            return 2
        job_id = producer.submit(model=args.model, recipe=args.recipe, backend=args.backend, weights=args.weights,
                                 reuse=not args.force, force=args.force, runtime=args.runtime,
                                 **source_options(args))
    except UserInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        producer.close()
    print(job_id)
    return 0


def parse_data_option(text: str) -> dict[str, str]:
    """``--data eval=PATH[,calibration=PATH][,train=PATH]`` (or just ``PATH``, the eval data) as a mapping.

    Example:
        >>> parse_data_option("eval=val.jsonl,calibration=calib.jsonl")
        {'eval': 'val.jsonl', 'calibration': 'calib.jsonl'}
        >>> parse_data_option("eval=val.jsonl,train=train.jsonl")
        {'eval': 'val.jsonl', 'train': 'train.jsonl'}
        >>> parse_data_option("val-images/")
        {'eval': 'val-images/'}
    """
    from modelpress.errors import UserInputError

    if "=" not in text:
        return {"eval": text}
    out: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if key.strip() not in ("eval", "calibration", "train") or not sep or not value.strip():
            raise UserInputError(f"--data {text!r}: expected eval=PATH[,calibration=PATH][,train=PATH], got {part!r}")
        out[key.strip()] = value.strip()
    if "eval" not in out:
        raise UserInputError(f"--data {text!r}: eval=PATH is required (the held-out data the metric is computed on)")
    return out


def source_options(args: argparse.Namespace) -> dict[str, Any]:
    """The own-model options of ``modelpress submit`` (issue 9) as ``Producer.submit`` keywords."""
    from modelpress.errors import UserInputError

    out: dict[str, Any] = {}
    if args.data is not None:
        out["data"] = parse_data_option(args.data)
    if args.preprocess is not None:
        try:
            out["preprocess"] = json.loads(args.preprocess)
        except ValueError as e:
            raise UserInputError(f"--preprocess is not JSON ({e}); e.g. '{{\"resize\": 256, \"crop\": 224}}'") from None
        if not isinstance(out["preprocess"], dict):
            raise UserInputError("--preprocess must be a JSON object, e.g. '{\"resize\": 256, \"crop\": 224}'")
    if args.metric is not None:
        out["metric"] = args.metric
    if args.max_length is not None:
        out["max_length"] = args.max_length
    if getattr(args, "primary_output", None) is not None:
        out["primary_output"] = args.primary_output
    if args.latency_batches is not None:
        try:
            out["latency_batches"] = [int(b) for b in args.latency_batches.split(",")]
        except ValueError:
            raise UserInputError(f"--latency-batches {args.latency_batches!r}: expected sizes such as 1,32") from None
    return out


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from modelpress.optimize.timing_lock import prepare_lock_dir
    from modelpress.workers.runtime import configure_worker, install_reconnect_reconcile
    from modelpress.tasks.registry import make_worker_app

    refused = refuse_or_warn(settings, "worker", embedded=args.embedded,
                             allow_example_passwords=args.allow_example_passwords)
    if refused is not None:
        return refused
    try:  # at start, not in the middle of a job: a lock folder others can write to is a configuration error
        prepare_lock_dir(settings.timing_lock_dir)
    except OSError as e:  # UnsafeTimingLockDir, or a folder that cannot be made
        print(f"error: {e}", file=sys.stderr)
        return 2
    backend = args.backend or native_backend()
    ensure_db(settings)
    configure_worker(backend, settings.worker_threads)
    app = make_worker_app(settings)
    install_reconnect_reconcile(app)
    argv = ["worker", "-Q", backend, "-c", str(args.concurrency or settings.worker_concurrency),
            "-n", f"{backend}-{os.getpid()}@%h", "-l", args.loglevel, "-P", "prefork", "-E"]
    if args.max_tasks_per_child:
        argv += ["--max-tasks-per-child", str(args.max_tasks_per_child)]
    app.worker_main(argv=argv)
    return 0


def cmd_jobs(args: argparse.Namespace, settings: Settings) -> int:
    ensure_db(settings)
    rows = _rows(settings, status=args.status, batch_id=args.batch, limit=args.limit)
    print(json.dumps(rows, indent=1) if args.format == "json" else jobs_table(rows))
    return 0


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    from modelpress.models_db import get_job, make_engine, make_sessionmaker

    ensure_db(settings)
    eng = make_engine(settings.effective_database_url)
    with make_sessionmaker(eng)() as s:
        job = get_job(session=s, job_id=args.job)
        row = job.to_dict() if job else None
    eng.dispose()
    if row is None:
        print(f"error: no job {args.job!r}", file=sys.stderr)
        return 2
    print(json.dumps(row, indent=1))
    if row["status"] == "running" and row.get("progress"):
        # On stderr: stdout stays the row as JSON, which scripts parse.
        print(f"progress: {progress_text(row['progress'])}", file=sys.stderr)
    return 0


def cmd_wait(args: argparse.Namespace, settings: Settings) -> int:
    from modelpress.commands.batches import batch_to_wait_for, wait_batch

    batch = args.batch or batch_to_wait_for(settings, args.jobs)
    if batch:
        return wait_batch(settings, batch, timeout=args.timeout)
    if not args.jobs:
        print("error: give job ids, or --batch BATCH", file=sys.stderr)
        return 2
    rows = wait_for(settings, args.jobs, timeout=args.timeout)
    print(jobs_table(rows))
    return 0 if all(r["status"] != "failed" for r in rows) else 1


def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    from modelpress.models_db import migrate

    url = settings.effective_database_url
    if url.startswith("sqlite"):
        settings.home.mkdir(parents=True, exist_ok=True)
    if args.action == "upgrade":
        migrate.upgrade(url, args.revision or "head")
    elif args.action == "downgrade":
        migrate.downgrade(url, args.revision or "-1")
    print(f"database at revision {migrate.current(url)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modelpress", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="optimize the built-in models through real worker processes, print a table")
    d.add_argument("--jobs", default=",".join(f"{m}:{r}" for m, r in DEMO_JOBS), metavar="MODEL:RECIPE,...",
                   help="jobs on the first backend (default: %(default)s)")
    d.add_argument("--backends", default=",".join([native_backend()] + [b for b in BACKENDS if b != native_backend()]))
    d.add_argument("--timeout", type=float, default=1800)
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser("submit", help="enqueue one job (or every job of a manifest)")
    s.add_argument("manifest", nargs="?", help="a manifest YAML file (many models × recipes × backends)")
    s.add_argument("--model", help="registered model name, module:function inside the allow-list, or a model given "
                                   "by its files: hf:FOLDER, torchvision:NAME, timm:NAME, export:FILE.pt2")
    s.add_argument("--recipe", help="built-in recipe name or a .json/.yaml recipe file")
    s.add_argument("--backend", help=f"target backend: {', '.join(BACKENDS)}")
    s.add_argument("--weights", help="state dict file (.safetensors, or torch.save loaded with weights_only)")
    s.add_argument("--data", metavar="eval=PATH[,calibration=PATH][,train=PATH]",
                   help="the model's own data: .jsonl text, .safetensors/.npz tensors, or an image folder")
    s.add_argument("--preprocess", metavar="JSON", help="images: {\"resize\": 256, \"crop\": 224, \"mean\": [...], "
                                                        "\"std\": [...]} (default: timm's pretrained config)")
    s.add_argument("--metric", choices=("accuracy", "top1_agreement", "cosine"), help="override the metric")
    s.add_argument("--max-length", type=int, help="text: tokenizer max_length (default: the tokenizer's)")
    s.add_argument("--primary-output", metavar="NAME", help="an export: program with several outputs: the output "
                                                            "whose metric carries the budget (default: the first)")
    s.add_argument("--latency-batches", metavar="1,32", help="batch sizes to time (default 1,32)")
    s.add_argument("--force", action="store_true", help="run again even if an identical job succeeded")
    s.add_argument("--runtime", help="where the artifact runs: torch, onnxruntime, openvino, or auto (build each, "
                                     "keep the fastest that keeps the budget); default: the recipe's own")
    s.set_defaults(func=cmd_submit)

    w = sub.add_parser("worker", help="run a Celery worker for one backend's queue")
    w.add_argument("--backend", choices=BACKENDS, help="default: the host's native backend")
    w.add_argument("--concurrency", type=int)
    w.add_argument("--loglevel", default="INFO")
    w.add_argument("--max-tasks-per-child", type=int)
    w.add_argument("--embedded", action="store_true",
                   help="allow the embedded broker and database (one machine, e.g. the demo) when "
                        "MODELPRESS_BROKER_URL / MODELPRESS_DATABASE_URL are not set")
    w.add_argument("--allow-example-passwords", action="store_true", help=EXAMPLE_PASSWORDS_HELP)
    w.set_defaults(func=cmd_worker)

    j = sub.add_parser("jobs", help="list jobs")
    j.add_argument("--format", choices=("table", "json"), default="table")
    j.add_argument("--status")
    j.add_argument("--batch")
    j.add_argument("--limit", type=int, default=200)
    j.set_defaults(func=cmd_jobs)

    sh = sub.add_parser("show", help="one job, every field, as JSON (a running job's progress on stderr)")
    sh.add_argument("job", help="job id or a unique prefix (6+ characters)")
    sh.set_defaults(func=cmd_show)

    wt = sub.add_parser("wait", help="wait for jobs (or a batch) to finish; exit 1 if any failed")
    wt.add_argument("jobs", nargs="*", help="job ids, or one batch id")
    wt.add_argument("--batch", help="follow a batch with a live progress bar per backend")
    wt.add_argument("--timeout", type=float, default=3600)
    wt.set_defaults(func=cmd_wait)

    db = sub.add_parser("db", help="database migrations")
    db.add_argument("action", choices=("upgrade", "downgrade", "current"))
    db.add_argument("revision", nargs="?")
    db.set_defaults(func=cmd_db)

    import importlib

    from modelpress.commands import COMMAND_MODULES

    for mod in COMMAND_MODULES:
        importlib.import_module(mod).add_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from modelpress.filemodes import set_process_umask

    # Whatever umask the caller left (often 0022, sometimes 0000): what this process and the workers it forks
    # create — staged inputs, artifacts, logs, the embedded database — is the service's user and group's only.
    set_process_umask()
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except Exception as e:  # noqa: BLE001 - pydantic's message names the bad variable
        print(f"error: invalid MODELPRESS_* settings: {e}", file=sys.stderr)
        return 2
    return int(args.func(args, settings) or 0)
