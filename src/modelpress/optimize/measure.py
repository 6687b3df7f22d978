"""Measurement, one module, used everywhere: bytes on disk, latency done right, task metrics.

Rules (DEVELOPERS.md, non-negotiable 1): size is the byte count of the serialized artifact, never
a parameter count (packed int8 weights are not parameters); latency is warm-up, then many timed runs,
reported as median and p90 with threads, batch size and input shape; the metric is computed on the same
held-out inputs before and after.

Example:
    >>> import torch
    >>> stats = measure_latency(torch.nn.Linear(4, 2).eval(), torch.randn(8, 4), warmup=2, runs=5)
    >>> stats.batch_size, stats.runs
    (8, 5)
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

# The host timing lock lives in its own torch-free module (the worker's parent checks its folder at start);
# its names stay importable from here, where the pipelines have always found them.
from modelpress.optimize.timing_lock import (
    TIMING_LOCK_NAME,
    TimingLockTimeout,
    UnsafeTimingLockDir,
    default_timing_lock_dir,
    host_timing_lock,
)
from modelpress.optimize.outputs import OutputsMetric, pack, single_metric
from modelpress.optimize.spec import Inputs, Metric


@dataclass(frozen=True)
class LatencyStats:
    """Wall time of one forward pass, in milliseconds, over ``runs`` timed calls after ``warmup``."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    stdev_ms: float
    min_ms: float
    max_ms: float
    runs: int
    warmup: int
    batch_size: int
    input_shape: list[list[int]]
    threads: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def as_tuple(x: Inputs) -> tuple[torch.Tensor, ...]:
    return x if isinstance(x, tuple) else (x,)


def batch_of(x: Inputs, start: int, stop: int) -> tuple[torch.Tensor, ...]:
    return tuple(t[start:stop] for t in as_tuple(x))


def n_samples(x: Inputs) -> int:
    return int(as_tuple(x)[0].shape[0])


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with exactly ``n`` intra-op threads, restoring the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _percentile(sorted_vals: list[float], q: float) -> float:
    # Linear interpolation between closest ranks (same as numpy's default).
    k = (len(sorted_vals) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo)


def time_calls(model: Callable[..., torch.Tensor], args: tuple[torch.Tensor, ...], *, warmup: int, runs: int,
               threads: int) -> list[float]:
    """Raw wall times in ms of ``runs`` calls of ``model(*args)`` after ``warmup``, inference mode.

    ``model`` is any callable: an ``nn.Module`` or a runtime's loaded artifact (ONNX Runtime, OpenVINO), whose
    own thread setting is pinned when it is loaded; ``threads`` pins torch's.

    Example:
        >>> import torch
        >>> len(time_calls(torch.nn.Linear(2, 2).eval(), (torch.randn(1, 2),), warmup=1, runs=4, threads=1))
        4
    """
    times: list[float] = []
    with torch_threads(threads), torch.inference_mode():
        for _ in range(warmup):
            model(*args)
        for _ in range(runs):
            t0 = time.perf_counter_ns()
            model(*args)
            times.append((time.perf_counter_ns() - t0) / 1e6)
    return times


def measure_latency(model: Callable[..., torch.Tensor], inputs: Inputs, *, warmup: int = 10, runs: int = 50,
                    threads: int = 1) -> LatencyStats:
    """Median/p90 latency of ``model(*inputs)`` in inference mode at a fixed thread count."""
    if runs < 3:
        raise ValueError("runs must be at least 3 for a median and a spread")
    if getattr(model, "training", False):
        # A model left in training mode runs dropout and updates BN stats: the numbers would lie.
        raise ValueError("measure_latency needs a model in eval mode")
    args = as_tuple(inputs)
    return _stats(time_calls(model, args, warmup=warmup, runs=runs, threads=threads), warmup=warmup, args=args,
                  threads=threads)


def _stats(times: list[float], *, warmup: int, args: tuple[torch.Tensor, ...], threads: int) -> LatencyStats:
    s = sorted(times)
    return LatencyStats(
        median_ms=statistics.median(s), p90_ms=_percentile(s, 0.9), mean_ms=statistics.fmean(s),
        stdev_ms=statistics.stdev(s), min_ms=s[0], max_ms=s[-1], runs=len(s), warmup=warmup,
        batch_size=int(args[0].shape[0]), input_shape=[list(a.shape) for a in args], threads=threads,
    )


def interleaved_latency(models: dict[str, Callable[..., torch.Tensor]], inputs: Inputs, *, rounds: int = 5,
                        runs: int = 10, warmup: int = 2, threads: int = 1) -> dict[str, dict[str, Any]]:
    """Latency of several models on the same input, timed in alternating rounds; per model, pooled stats.

    Timing one model after another lets a drift of the host (frequency, a neighbour's cache traffic) land
    on one side only: two artifacts 3 % apart swap places between sequential runs (docs/benchmarks.md).
    Here every round times each model for ``runs`` calls after ``warmup`` (the order rotates each round so
    no model always follows the same one), and each model's stats pool its ``rounds × runs`` times; the
    round medians are kept to show the spread.

    Example:
        >>> import torch
        >>> m = {"a": torch.nn.Linear(4, 2).eval(), "b": torch.nn.Linear(4, 8).eval()}
        >>> out = interleaved_latency(m, torch.randn(3, 4), rounds=2, runs=3, warmup=1)
        >>> sorted(out), out["a"]["stats"].runs, len(out["b"]["round_medians_ms"])
        (['a', 'b'], 6, 2)
    """
    if rounds < 1 or runs * rounds < 3:
        raise ValueError("interleaved_latency needs at least one round and 3 runs per model")
    if any(getattr(m, "training", False) for m in models.values()):
        raise ValueError("interleaved_latency needs models in eval mode")
    args = as_tuple(inputs)
    names = list(models)
    times: dict[str, list[float]] = {n: [] for n in names}
    medians: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            t = time_calls(models[n], args, warmup=warmup, runs=runs, threads=threads)
            times[n] += t
            medians[n].append(statistics.median(t))
    return {n: {"stats": _stats(times[n], warmup=warmup, args=args, threads=threads),
                "round_medians_ms": medians[n]} for n in names}


#: Rounds of the final before/after timing; each round times the float model and the chosen artifact.
FINAL_ROUNDS = 5


def before_after_latency(before: Callable[..., torch.Tensor], after: Callable[..., torch.Tensor], spec: Any, *,
                         lock_dir: str | os.PathLike[str] | None, warmup: int, runs: int, threads: int,
                         timings: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The reported latencies (``spec``: a ``spec.ModelSpec``): a fresh timing of the float model and the chosen artifact, after every choice.

    Figures that chose an artifact (a candidate's first timing, a run-off) are its evidence, kept in the
    record; reporting them would report the winner of a noisy contest at its luckiest. So once the choice
    is made, ``before`` and ``after`` are timed again, side by side in alternating rounds
    (``measure.interleaved_latency``) at every latency batch, under the host timing lock: a drift of the host
    lands on both. ``runs`` timed calls per model in all (``warmup`` spread over the rounds).

    Example:
        >>> import torch
        >>> from modelpress.optimize.spec import ModelSpec
        >>> spec = ModelSpec(name="x", version=1, build=lambda: None, data=lambda: None, metric="cosine",
        ...                  make_input=lambda b: torch.randn(b, 4), latency_batches=(1, 8))
        >>> b, a = before_after_latency(torch.nn.Linear(4, 4).eval(), torch.nn.Linear(4, 2).eval(), spec,
        ...                             lock_dir=__import__("tempfile").mkdtemp(), warmup=2, runs=6, threads=1,
        ...                             timings=[])
        >>> [s["batch_size"] for s in a], a[0]["interleaved"], a[0]["runs"]
        ([1, 8], True, 6)
    """
    rounds = max(1, min(FINAL_ROUNDS, runs // 3))
    per_round = math.ceil(runs / rounds)
    warm = max(1, math.ceil(warmup / rounds)) if warmup else 0
    lat_before: list[dict[str, Any]] = []
    lat_after: list[dict[str, Any]] = []
    with host_timing_lock(lock_dir, phase="before+after") as rec:
        for b in spec.latency_batches:
            got = interleaved_latency({"before": before, "after": after}, spec.make_input(b), rounds=rounds,
                                      runs=per_round, warmup=warm, threads=threads)
            for name, out in (("before", lat_before), ("after", lat_after)):
                out.append({**got[name]["stats"].to_dict(), "interleaved": True, "rounds": rounds,
                            "round_medians_ms": got[name]["round_medians_ms"]})
    timings.append(rec)
    return lat_before, lat_after


def file_size(path: str | os.PathLike[str]) -> int:
    """Bytes of a file on disk: the only size modelpress reports."""
    return os.stat(path).st_size


@torch.inference_mode()
def predict(model: Callable[..., Any], inputs: Inputs, *, batch_size: int = 256) -> torch.Tensor:
    """Model outputs over all inputs, in batches, as one float tensor (several outputs packed: ``outputs.pack``)."""
    outs = []
    for i in range(0, n_samples(inputs), batch_size):
        outs.append(pack(model(*batch_of(inputs, i, i + batch_size))))
    return torch.cat(outs)


def compute_metric(metric: Metric | OutputsMetric, outputs: torch.Tensor, *, labels: torch.Tensor | None,
                   reference: torch.Tensor | None) -> float:
    """Task metric from outputs: accuracy vs labels, or fidelity (top-1 agreement / cosine) vs float.

    For a model with several outputs (``OutputsMetric``), the primary output's metric.

    Example:
        >>> import torch
        >>> compute_metric("accuracy", torch.tensor([[0.1, 0.9]]), labels=torch.tensor([1]), reference=None)
        1.0
    """
    if isinstance(metric, OutputsMetric):
        return metric.score(outputs, labels=labels, reference=reference)
    return single_metric(metric, outputs, labels=labels, reference=reference)


def count_params(model: nn.Module) -> int:
    """Elements in the model's weight tensors, quantized ones included (unlike ``parameters()``).

    Packed int8 weights are not ``nn.Parameter``s, so counting parameters would report 0 for a
    quantized model; this walks the state dict and unpacks packed params instead.
    """
    total = 0
    for v in model.state_dict().values():
        for t in _tensors_in(v):
            total += t.numel()
    return total


def _tensors_in(v: object) -> Iterator[torch.Tensor]:
    if isinstance(v, torch.Tensor):
        if v.dtype not in (torch.int64, torch.long) or v.is_quantized:
            # Skip bookkeeping like BatchNorm's num_batches_tracked.
            yield v
    elif isinstance(v, (tuple, list)):
        for x in v:
            yield from _tensors_in(x)
    elif hasattr(v, "__getstate__") and type(v).__name__.endswith("PackedParamsBase"):
        yield from _tensors_in(v.__getstate__())


def count_flops(model: nn.Module, inputs: Inputs) -> int:
    """Floating-point operations of one forward pass (2 × MACs), counted by torch's FlopCounterMode.

    Count on the float (or pruned float) model: quantized kernels are not counted by the flop counter,
    and quantization does not change the number of multiply-accumulates.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        model(*as_tuple(inputs))
    return int(fc.get_total_flops())


def global_sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero entries over all float weight tensors named ``*weight``."""
    zeros = total = 0
    for k, v in model.state_dict().items():
        if k.endswith("weight") and isinstance(v, torch.Tensor) and v.is_floating_point():
            zeros += int((v == 0).sum())
            total += v.numel()
    return zeros / total if total else 0.0
