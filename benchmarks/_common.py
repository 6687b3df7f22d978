"""Shared by the benchmark scripts: machine description, load warning, JSON/markdown output.

Not a benchmark itself. Each script in this folder imports it (the scripts run as
``.venv/bin/python benchmarks/NAME.py``, so this folder is on ``sys.path``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Sequence

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results"
# Above this 1-minute load average per core the machine is busy enough that absolute times are suspect.
BUSY_LOAD_PER_CORE = 0.25


# ------------------------------------------------------------------------------- the machine
def cpu_model() -> str:
    from modelpress.optimize.hostcpu import cpu_model as _model

    return _model()


def cpu_flags() -> set[str]:
    from modelpress.optimize.hostcpu import cpu_flags as _flags

    return set(_flags())


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


#: What the benchmarks write. A run rewrites these as it goes, so they never make the source "dirty": only
#: changes to the code that measures do (otherwise every benchmark after the first would call itself dirty).
OUTPUT_PATHSPECS = (":(exclude)benchmarks/results", ":(exclude)docs/benchmarks.md")


def source_dirty() -> bool | None:
    """Whether tracked files other than the benchmarks' outputs have uncommitted changes (None: no git)."""
    out = _git("status", "--porcelain", "--untracked-files=no", "--", ".", *OUTPUT_PATHSPECS)
    return None if out is None else bool(out)


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def mem_total_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    """Everything a reader needs to know which machine (and software) a number came from."""
    flags = cpu_flags()
    torch_version = _version("torch")
    try:  # the build string (e.g. "2.13.0+cpu") says more than the distribution version
        import torch

        torch_version = torch.__version__
    except ImportError:
        pass
    dirty = source_dirty()
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "arch": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        # int8 speed depends on these: AVX2 (fbgemm's baseline), AVX-512 VNNI (int8 dot products).
        "cpu_int8_features": sorted(flags & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16", "amx_bf16"}),
        "hypervisor": "hypervisor" in flags,
        "mem_total_bytes": mem_total_bytes(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": {d: _version(d) for d in ("modelpress", "onnx", "onnxruntime", "onnxscript", "celery",
                                                "kombu", "redis", "sqlalchemy", "numpy")} | {"torch": torch_version},
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": dirty,
        "load_average": list(os.getloadavg()),
        # Set by tools/arm-worker (aarch64 under qemu-user): such times are not speeds (docs/operations.md).
        "emulated": os.environ.get("MODELPRESS_EMULATED") or None,
    }


def load_warning(prefix: str = "") -> str | None:
    """A warning line when other work is running (numbers then are noisy), else None."""
    load1, load5, _ = os.getloadavg()
    cores = os.cpu_count() or 1
    if load1 > BUSY_LOAD_PER_CORE * cores or load5 > BUSY_LOAD_PER_CORE * cores:
        return (f"{prefix}WARNING: load average {load1:.2f} (1 min) / {load5:.2f} (5 min) on {cores} cores: "
                "other work is running, so absolute times are noisy; trust ratios measured in one run "
                "more than times, and rerun on a quiet machine for numbers to publish.")
    return None


# ------------------------------------------------------------------------------- statistics
def job_timing(recipe: Any) -> dict[str, int]:
    """The in-job latency measurement a benchmark asks ``optimize_model`` for.

    A torch-runtime job's numbers are measured again by the benchmark (interleaved with its peers), so the
    job measures at the minimum. A job in another runtime (or ``auto``) *chooses* by its own numbers (which
    runtime, which variant), so it measures as a worker does, with the settings' defaults: with 3 runs,
    two candidates 3 % apart were picked by noise.
    """
    if getattr(recipe, "runtime", "torch") == "torch":
        return {"warmup": 1, "runs": 3}
    from modelpress.settings import Settings

    return {"warmup": Settings.model_fields["latency_warmup"].default,
            "runs": Settings.model_fields["latency_runs"].default}


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    """min / median / max / mean / stdev / coefficient of variation of ``values``."""
    v = sorted(values)
    if not v:
        return {"n": 0, "min": None, "median": None, "max": None, "mean": None, "stdev": None, "cv": None}
    mean = statistics.fmean(v)
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    return {"n": len(v), "min": v[0], "median": statistics.median(v), "max": v[-1], "mean": mean,
            "stdev": sd, "cv": sd / mean if mean else None}


def percentile(values: Sequence[float], q: float) -> float:
    # Linear interpolation between closest ranks (numpy's default), same as optimize.measure.
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None when either is missing or ``b`` is zero."""
    if a is None or b is None or b == 0:
        return None
    return a / b


# ------------------------------------------------------------------------------- output
def command_line(script: str, argv: Sequence[str]) -> str:
    """The command as a user would type it from the repository root."""
    return " ".join(shlex.quote(a) for a in [".venv/bin/python", f"benchmarks/{script}", *argv])


class Run:
    """Start/finish bookkeeping shared by every script's JSON: command, machine, load, duration."""

    def __init__(self, benchmark: str, script: str, argv: Sequence[str], args: Any) -> None:
        self.benchmark = benchmark
        self.t0 = time.monotonic()
        self.doc: dict[str, Any] = {
            "benchmark": benchmark,
            "command": command_line(script, argv),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": machine_info(),
        }
        warning = load_warning()
        self.doc["load_warning_at_start"] = warning
        if warning:
            print(warning, file=sys.stderr)

    def finish(self, results: dict[str, Any]) -> dict[str, Any]:
        self.doc.update(results)
        self.doc["load_average_at_end"] = list(os.getloadavg())
        self.doc["duration_s"] = round(time.monotonic() - self.t0, 1)
        return self.doc


def write_outputs(out_dir: Path, name: str, doc: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    jp, mp = out_dir / f"{name}.json", out_dir / f"{name}.md"
    jp.write_text(json.dumps(doc, indent=1, sort_keys=False, default=str) + "\n")
    mp.write_text(markdown)
    return jp, mp


def md_table(head: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in r) + " |")
    return "\n".join(lines) + "\n"


def fmt(v: float | int | None, spec: str = ".3g") -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    return format(v, spec)


def fx(v: float | None, digits: int = 2) -> str:
    """A ratio as ``1.23×``."""
    return "–" if v is None else f"{v:.{digits}f}×"


def machine_markdown(m: dict[str, Any]) -> str:
    v = m["versions"]
    load = ", ".join(f"{x:.2f}" for x in m["load_average"])
    return md_table(["what", "value"], [
        ["date (UTC)", m["date_utc"]],
        ["CPU", f"{m['cpu_model']} ({m['arch']}{', virtual machine' if m.get('hypervisor') else ''})"
                + (f" — EMULATED ({m['emulated']}): times show the path runs, not its speed" if m.get("emulated") else "")],
        ["cores (logical / usable)", f"{m['logical_cpus']} / {m['usable_cpus']}"],
        ["int8-relevant CPU features", ", ".join(m["cpu_int8_features"]) or "none"],
        ["memory", fmt(m["mem_total_bytes"] and m["mem_total_bytes"] / 2**30, ".1f") + " GiB"],
        ["OS / Python", f"{m['os']} / {m['python']}"],
        ["torch / onnxruntime / onnx / onnxscript", f"{v['torch']} / {v['onnxruntime']} / {v['onnx']} / {v['onnxscript']}"],
        ["celery / kombu / redis-py / SQLAlchemy", f"{v['celery']} / {v['kombu']} / {v['redis']} / {v['sqlalchemy']}"],
        ["modelpress commit", f"{(m['git_commit'] or '?')[:12]}{' (uncommitted changes)' if m['git_dirty'] else ''}"],
        ["load average at start (1/5/15 min)", load],
    ])
