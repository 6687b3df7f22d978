"""Run the fault and bad-input suites and print (or write into docs/faults.md) the table of what they found.

Every number comes from the run: each fault test records the faults it injected and what its final check
of the job table counted (jobs, lost, duplicate results); each bad-input test records the error it got;
pytest's own outcome says whether the test passed.

Example:
    $ .venv/bin/python -m tests.faults.make_table                  # print the table
    $ .venv/bin/python -m tests.faults.make_table --write docs/faults.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
START, END = "<!-- faults-table:start -->", "<!-- faults-table:end -->"
SUITES = ("tests/faults", "tests/bad_input")


def run_suites(record_path: Path, timeout: float) -> tuple[int, str, float]:
    env = {**os.environ, "MP_FAULTS_RECORD": str(record_path)}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mp-faults-table-") as base:
        out = subprocess.run([sys.executable, "-m", "pytest", *SUITES, "-q", "-p", "no:cacheprovider",
                              f"--basetemp={base}"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=timeout)
    summary = next((line for line in reversed(out.stdout.splitlines()) if re.search(r"\d+ (passed|failed)", line)),
                   out.stdout[-300:])
    return out.returncode, summary.strip("= "), time.monotonic() - started


def _short(text: str, n: int = 140) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= n else text[: n - 1] + "…"


def build_table(records: list[dict], summary: str, seconds: float) -> str:
    outcomes: dict[str, str] = {}
    for r in records:
        if r["kind"] == "outcome":
            outcomes[r["nodeid"]] = r["outcome"]
    passed = {n for n, o in outcomes.items() if o == "passed"}

    faults = [r for r in records if r["kind"] == "fault"]
    lines = ["### Faults injected", "",
             "| fault | injected | jobs | finished | lost | duplicate results | survived |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for f in faults:
        finished = sum(n for s, n in f["statuses"].items() if s in ("succeeded", "failed", "rejected"))
        ok = f["test"] in passed
        states = ", ".join(f"{n} {s}" for s, n in sorted(f["statuses"].items()))
        lines.append(f"| {f['fault']} | {f['injected']} | {f['jobs']} | {finished} ({states}) | {f['lost']} | "
                     f"{f['duplicates']} | {'yes' if ok else '**no**'} |")
    lines.append(f"| **total** | {sum(f['injected'] for f in faults)} | {sum(f['jobs'] for f in faults)} | | "
                 f"{sum(f['lost'] for f in faults)} | {sum(f['duplicates'] for f in faults)} | "
                 f"{sum(f['test'] in passed for f in faults)} of {len(faults)} |")

    bad = [r for r in records if r["kind"] == "bad_input"]
    bad = list(OrderedDict(((b["group"], b["case"], b["stage"]), b) for b in bad).values())
    clear = [b for b in bad if b["test"] in passed and b.get("error")]
    by_stage: dict[str, int] = {}
    for b in clear:
        by_stage[b["stage"]] = by_stage.get(b["stage"], 0) + 1
    lines += ["", "### Bad inputs", "",
              f"{len(bad)} bad inputs tried, {len(clear)} given a clear error "
              f"({', '.join(f'{n} {where}' for where, n in sorted(by_stage.items()))}); "
              "each test also checks that nothing else was harmed (no row written when refused at submit; "
              "the next good job still succeeds; refused code never ran).", "",
              "| input | caught by | error given |", "|---|---|---|"]
    where = {"submit": "submit (no row)", "worker": "worker (job failed, 1 attempt)", "reconciler": "reconciler"}
    for b in bad:
        mark = "" if b in clear else " **(test failed)**"
        lines.append(f"| {b['group']}: {b['case']}{mark} | {where.get(b['stage'], b['stage'])} | {_short(b['error'])} |")
    lines += ["", f"Produced by `python -m tests.faults.make_table` ({summary}; {seconds:.0f} s wall time "
                  f"on {os.cpu_count()} cores)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", type=Path, help=f"replace the part of this file between {START} and {END}")
    p.add_argument("--timeout", type=float, default=1200)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        record_path = Path(tmp) / "record.jsonl"
        code, summary, seconds = run_suites(record_path, args.timeout)
        records = [json.loads(line) for line in record_path.read_text().splitlines()] if record_path.exists() else []
    table = build_table(records, summary, seconds)
    print(table)
    if args.write:
        text = args.write.read_text()
        if START not in text or END not in text:
            print(f"error: {args.write} has no {START} … {END} section", file=sys.stderr)
            return 2
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        args.write.write_text(f"{head}{START}\n{table}\n{END}{tail}")
    return code


if __name__ == "__main__":
    sys.exit(main())
