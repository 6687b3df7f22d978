"""Bulk commands: ``batches``, ``report``, and the batch side of ``wait``. No torch import at module level.

Example:
    $ modelpress submit zoo.yaml                 # a manifest → one batch; prints the batch id
    $ modelpress wait --batch 3f2a9c01           # live progress per backend; exit 1 if a job failed
    $ modelpress batches                         # every batch with its counts
    $ modelpress report 3f2a9c01 --html report.html
    $ modelpress report 3f2a9c01 --format csv > results.csv
    $ modelpress report --zoo --models mlp --recipes dynamic-int8,l1-sparse50
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, TextIO

if TYPE_CHECKING:
    from modelpress.settings import Settings

EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT = 1, 2, 3


@contextmanager
def _database(settings: "Settings") -> Iterator[Any]:
    """A sessionmaker on the job table for one command; its engine is disposed afterwards."""
    from modelpress.commands.common import ensure_db
    from modelpress.models_db import make_engine, make_sessionmaker

    ensure_db(settings)
    engine = make_engine(settings.effective_database_url)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


def _error(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return EXIT_USAGE


# ----------------------------------------------------------------------------- wait --batch
def find_batch(settings: "Settings", ref: str) -> dict[str, Any] | None:
    """The batch with id (or unique 6+ character prefix) ``ref`` as a dict, or None."""
    from modelpress.models_db.jobs import get_batch

    with _database(settings) as sessions, sessions() as s:
        b = get_batch(session=s, batch_id=ref)
        return None if b is None else {"id": b.id, "name": b.name, "kind": b.kind, "source": b.source,
                                       "created_at": b.created_at}


def batch_to_wait_for(settings: "Settings", refs: list[str]) -> str | None:
    """``modelpress wait X``: X is a batch when it is the only argument and names a batch."""
    if len(refs) != 1:
        return None
    found = find_batch(settings, refs[0])
    return None if found is None else found["id"]


def progress_line(counts: dict[str, dict[str, int]], *, width: int = 24) -> tuple[str, int, int]:
    """One line: an overall bar, then done/failed/running/queued per backend; returns (line, finished, total).

    Example:
        >>> progress_line({"fbgemm": {"succeeded": 3, "failed": 1, "running": 1, "queued": 5}})[0]
        '[#########...............] 4/10  fbgemm 4/10: 3 done, 1 failed, 1 running, 5 queued'
    """
    total = finished = 0
    parts = []
    for backend in sorted(counts):
        c = counts[backend]
        n = sum(v for k, v in c.items() if k != "reused")
        done = c.get("succeeded", 0) + c.get("rejected", 0)
        fin = done + c.get("failed", 0)
        total, finished = total + n, finished + fin
        extra = ", ".join(f"{c[k]} {k}" for k in ("rejected", "reused") if c.get(k))
        parts.append(f"{backend} {fin}/{n}: {done} done{f' ({extra})' if extra else ''}, {c.get('failed', 0)} failed, "
                     f"{c.get('running', 0)} running, {c.get('queued', 0)} queued")
    filled = int(width * finished / total) if total else width
    bar = "#" * filled + "." * (width - filled)
    return f"[{bar}] {finished}/{total}  " + " | ".join(parts), finished, total


def wait_batch(settings: "Settings", batch_ref: str, *, timeout: float, interval: float = 1.0,
               stream: TextIO | None = None, out: TextIO | None = None) -> int:
    """Follow a batch until every job is finished; print the results table; an exit code.

    The bar is redrawn in place on a terminal; elsewhere (CI logs, pipes) a line is printed each time
    the counts change. Exit 0 when no job failed, 1 when one did, 2 for an unknown batch, 3 on timeout.

    Example:
        >>> wait_batch(Settings(), "3f2a9c01", timeout=3600)  # doctest: +SKIP
        [########################] 20/20  fbgemm 10/10: 10 done, 0 failed, ... | qnnpack 10/10: ...
        0
    """
    from modelpress.models_db import list_jobs
    from modelpress.models_db.jobs import batch_counts, get_batch
    from modelpress.report import render_table, rows_from_jobs

    stream = stream or sys.stderr
    out = out or sys.stdout
    tty = stream.isatty()
    with _database(settings) as sessions:
        with sessions() as s:
            batch = get_batch(session=s, batch_id=batch_ref)
            if batch is None:
                return _error(f"no batch {batch_ref!r} (see `modelpress batches`)")
            batch_id, name = batch.id, batch.name
        print(f"batch {batch_id} ({name!r})", file=stream)
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            with sessions() as s:
                counts = batch_counts(session=s, batch_id=batch_id)
            line, finished, total = progress_line(counts)
            if tty:
                stream.write("\r" + line + "\x1b[K")
                stream.flush()
            elif line != last:
                print(line, file=stream, flush=True)
            last = line
            if finished == total:
                break
            if time.monotonic() > deadline:
                if tty:
                    stream.write("\n")
                print(f"error: {total - finished} of {total} jobs not finished after {timeout:.0f} s", file=stream)
                return EXIT_TIMEOUT
            time.sleep(interval)
        if tty:
            stream.write("\n")
        with sessions() as s:
            rows = rows_from_jobs(j.to_dict() for j in list_jobs(session=s, batch_id=batch_id, limit=None))
    out.write(render_table(rows))
    failed = sum(r.status == "failed" for r in rows)
    if failed:
        print(f"{failed} of {len(rows)} jobs failed (the notes above say why)", file=stream)
        return EXIT_FAILED
    return 0


# ----------------------------------------------------------------------------- batches
def batches_table(batches: list[dict[str, Any]]) -> str:
    """Plain-text table of ``list_batches`` rows."""
    head = ["batch", "name", "kind", "created (UTC)", "jobs", "queued", "running", "succeeded", "rejected",
            "failed", "reused"]
    body = [[b["id"][:8], b["name"], b["kind"], b["created_at"][:19].replace("T", " "), b["total"], b["queued"],
             b["running"], b["succeeded"], b["rejected"], b["failed"], b["reused"]] for b in batches]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(head, widths)).rstrip(), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in body]
    return "\n".join(lines) + "\n"


def cmd_batches(args: argparse.Namespace, settings: "Settings") -> int:
    """``modelpress batches``: newest first, with job counts by status."""
    from modelpress.models_db.jobs import list_batches

    with _database(settings) as sessions, sessions() as s:
        batches = list_batches(session=s, kind=args.kind, limit=args.limit)
    sys.stdout.write(json.dumps(batches, indent=1) + "\n" if args.format == "json" else batches_table(batches))
    return 0


# ----------------------------------------------------------------------------- report
def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same folder and a rename (no half-written page)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a report is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _split(v: str | None) -> list[str] | None:
    return None if v is None else [x.strip() for x in v.split(",") if x.strip()]


def _emit(rows: list[Any], args: argparse.Namespace, *, title: str, subtitle: str,
          default_text: str | None = None) -> int:
    from modelpress.report import render_csv, render_html, render_json, render_table

    if args.html:
        write_atomically(Path(args.html), render_html(rows, title=title, subtitle=subtitle))
        print(f"wrote {args.html} ({len(rows)} jobs)", file=sys.stderr)
    if args.format or not args.html:
        fmt = args.format or "table"
        if fmt == "table" and default_text is not None:
            sys.stdout.write(default_text)
        else:
            sys.stdout.write({"json": render_json, "csv": render_csv, "table": render_table}[fmt](rows)
                             + ("\n" if fmt == "json" else ""))
    return 0


def cmd_report(args: argparse.Namespace, settings: "Settings") -> int:
    """``modelpress report BATCH`` or ``modelpress report --zoo``; bad input exits 2 and writes nothing."""
    if args.html:
        parent = Path(args.html).resolve().parent
        if not parent.is_dir():
            return _error(f"cannot write {args.html}: folder {parent} does not exist")
    if args.coverage:
        if args.batch or args.zoo or args.html:
            return _error("--coverage runs on its own: no batch id, --zoo or --html")
        return _report_coverage(args, settings)
    if args.families or args.runtimes:
        return _error("--families and --runtimes go with --coverage")
    if args.zoo:
        if args.batch:
            return _error("give a batch id or --zoo, not both")
        return _report_zoo(args, settings)
    if not args.batch:
        return _error("give a batch id (see `modelpress batches`) or --zoo")
    if args.models or args.recipes or args.engine:
        return _error("--models, --recipes and --engine go with --zoo")

    from modelpress.models_db import list_jobs
    from modelpress.models_db.jobs import get_batch
    from modelpress.report import rows_from_jobs

    with _database(settings) as sessions, sessions() as s:
        batch = get_batch(session=s, batch_id=args.batch)
        if batch is None:
            return _error(f"no batch {args.batch!r} (see `modelpress batches`)")
        rows = rows_from_jobs(j.to_dict() for j in list_jobs(session=s, batch_id=batch.id, limit=None))
        created = batch.created_at.strftime("%Y-%m-%d %H:%M")
        title = f"modelpress batch {batch.name}"
        subtitle = f"batch {batch.id} · {batch.kind} · created {created} UTC" + (
            f" · from {batch.source}" if batch.source else "")
    return _emit(rows, args, title=title, subtitle=subtitle)


def _report_zoo(args: argparse.Namespace, settings: "Settings") -> int:
    from modelpress.api import check_model_name
    from modelpress.errors import UserInputError
    from modelpress.optimize.recipes import resolve_recipe
    from modelpress.settings import native_backend
    from modelpress.worker_store import worker_dir

    models, recipes = _split(args.models), _split(args.recipes)
    try:  # every name checked before minutes of in-process work
        for m in models or []:
            check_model_name(m, settings.factory_allowlist)
        for r in recipes or []:
            resolve_recipe(r)
    except UserInputError as e:
        return _error(str(e))
    engine = args.engine or native_backend()

    # torch only now, and only for --zoo: it runs the pipeline in this process.
    from modelpress.report import rows_from_zoo
    from modelpress.zoo.report import DEFAULT_REPORT_RECIPES, format_report, run_zoo_report

    def log(msg: str) -> None:
        if msg.startswith("report:"):
            print(msg, file=sys.stderr, flush=True)

    zoo_rows = run_zoo_report(store=worker_dir(settings), models=models, recipes=recipes or DEFAULT_REPORT_RECIPES,
                              engine=engine, threads=settings.worker_threads, warmup=settings.latency_warmup,
                              runs=settings.latency_runs, log=log)
    comparisons = []
    if args.distill_seeds > 0 and "digits_cnn" in (models or ["digits_cnn"]):
        # Distillation is judged against the same student trained alone, over several seeds: one seed
        # on a 360-image test set cannot tell a real gain from noise.
        from modelpress.zoo.distill_compare import compare_distillation

        print("report: distilled vs alone over seeds", file=sys.stderr, flush=True)
        comparisons.append(compare_distillation("digits_cnn", seeds=tuple(range(args.distill_seeds)),
                                                cache_dir=worker_dir(settings) / "builtin"))
    return _emit(rows_from_zoo(zoo_rows), args, title="modelpress zoo report",
                 subtitle=f"engine {engine}, measured in-process",
                 default_text=format_report(zoo_rows, comparisons=comparisons))


def _report_coverage(args: argparse.Namespace, settings: "Settings") -> int:
    """``modelpress report --coverage``: every family × runtime in this process (``zoo.coverage``)."""
    import json

    from modelpress.worker_store import worker_dir
    from modelpress.zoo.coverage import RUNTIMES, format_matrix, run_coverage
    from modelpress.zoo.families import family

    families, runtimes = _split(args.families), _split(args.runtimes) or list(RUNTIMES)
    try:
        for f in families or []:
            family(f)
    except KeyError as e:
        return _error(str(e.args[0]))
    if unknown := [r for r in runtimes if r not in RUNTIMES]:
        return _error(f"unknown runtime(s) {', '.join(unknown)}; known: {', '.join(RUNTIMES)}")
    if args.format not in (None, "table", "json"):
        return _error("--coverage prints a table or json")

    def progress(cell) -> None:  # type: ignore[no-untyped-def]
        print(f"coverage: {cell.family} × {cell.runtime}: {cell.status} {cell.reason[:120]}", file=sys.stderr,
              flush=True)

    cells = run_coverage(store=worker_dir(settings) / "coverage", families=families, runtimes=runtimes,
                         recipe=args.recipes or "static-int8", progress=progress)
    if args.format == "json":
        sys.stdout.write(json.dumps([c.to_dict() for c in cells], indent=1) + "\n")
    else:
        sys.stdout.write(format_matrix(cells))
    return 0


# ----------------------------------------------------------------------------- registration
def add_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``batches`` and ``report`` on the ``modelpress`` parser (``wait --batch`` lives in cli)."""
    from modelpress.settings import BACKENDS

    b = sub.add_parser("batches", help="list batches (manifests, nightly runs, demos) with job counts")
    b.add_argument("--format", choices=("table", "json"), default="table")
    b.add_argument("--kind", help="only batches of this kind: manual, manifest, nightly, demo")
    b.add_argument("--limit", type=int, default=50)
    b.set_defaults(func=cmd_batches)

    r = sub.add_parser("report", help="results of a batch as HTML/JSON/CSV/table, or run the zoo report",
                       description="`modelpress report BATCH --html report.html` writes a self-contained page "
                                   "(inline CSS and SVG, no network). `modelpress report --zoo` runs zoo models × "
                                   "recipes in this process and prints the measured table; `modelpress report "
                                   "--coverage` runs the architecture families × runtimes matrix.")
    r.add_argument("batch", nargs="?", help="batch id or a unique prefix (6+ characters)")
    r.add_argument("--html", metavar="FILE", help="write the HTML report here")
    r.add_argument("--format", choices=("table", "json", "csv"), help="print to stdout (default: table)")
    r.add_argument("--zoo", action="store_true", help="run registered models × recipes in-process instead")
    r.add_argument("--models", help="with --zoo: comma-separated models (default: every registered one)")
    r.add_argument("--recipes", help="with --zoo: comma-separated recipes (default: the zoo report's list)")
    r.add_argument("--distill-seeds", type=int, default=3,
                   help="with --zoo: seeds for the distilled-vs-alone student comparison on digits (0: skip)")
    r.add_argument("--engine", choices=BACKENDS, help="with --zoo: quantized engine (default: the native one)")
    r.add_argument("--coverage", action="store_true",
                   help="run the coverage matrix in-process: architecture families × runtimes on this CPU")
    r.add_argument("--families", help="with --coverage: comma-separated families (default: all)")
    r.add_argument("--runtimes", help="with --coverage: comma-separated runtimes (default: torch, onnxruntime, "
                                      "openvino)")
    r.set_defaults(func=cmd_report)
