"""What one job returns and stores: ``OptimizeResult``, and the index that finds it again by key.

Every output of a job is an immutable object named by its sha256 (``float/``, ``artifacts/``,
``rejected/``, ``results/``). The key's index (``index/<key>.json``) names the latest result object, so a
re-measure points the index at new objects and never rewrites what an older row describes. This module
holds no torch: a producer can read a stored result without loading a model.

Example:
    >>> json_safe({"a": 1, "fn": len})
    {'a': 1}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

#: Version of the result's JSON form.
RESULT_FORMAT = 1


def _builder() -> str:
    from modelpress.optimize.buildinfo import build_fingerprint

    return build_fingerprint()


@dataclass
class OptimizeResult:
    """Every number of one job, all measured; JSON-able via ``to_dict``."""

    status: str  # "succeeded" | "rejected"
    reason: str | None
    model_name: str
    model_sha256: str
    recipe: dict[str, Any]
    recipe_sha256: str
    engine: str
    torch_version: str
    arch: str
    artifact_key: str
    artifact_path: str
    float_artifact_path: str
    size_before_bytes: int
    size_after_bytes: int
    metric_name: str
    metric_before: float
    metric_after: float
    latency_before: list[dict[str, Any]]
    latency_after: list[dict[str, Any]]
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    sparsity_after: float
    float_layers: list[str]
    steps_meta: list[dict[str, Any]]
    eval_description: str
    reused: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # Content addresses of the two artifacts (their file names are these hashes).
    artifact_sha256: str = ""
    float_artifact_sha256: str = ""
    # Dynamic int8 scales activations per batch: the metric depends on the batch it is evaluated in.
    metric_eval_batch_size: int | None = None
    metric_before_b1: float | None = None  # on the same first ``metric_b1_rows`` eval rows
    metric_after_b1: float | None = None
    metric_b1_rows: int | None = None
    # Where the artifact runs (issue 11): the runtime that built it (auto: the winner) and its package versions.
    runtime: str = "torch"
    runtime_versions: dict[str, str] = field(default_factory=dict)
    # The code that built and measured it (``buildinfo.build_fingerprint``): producers reuse a result only
    # from the code they run themselves.
    builder_sha256: str = field(default_factory=lambda: _builder())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OptimizeResult":
        return cls(**d)

    def latency(self, which: str, batch_size: int) -> dict[str, Any] | None:
        for s in getattr(self, f"latency_{which}"):
            if s["batch_size"] == batch_size:
                return s
        return None


def json_safe(extra: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``extra`` that are results (JSON-able); callables such as extra metrics are dropped."""
    out = {}
    for k, v in extra.items():
        try:
            json.dumps(v)
        except TypeError:
            continue
        out[k] = v
    return out


def cached_result(store: Path, key: str, log: Callable[[str], None]) -> OptimizeResult | None:
    """The stored result for ``key`` if it and both artifacts it names are intact, else None.

    Example:
        >>> import tempfile
        >>> cached_result(Path(tempfile.mkdtemp()), "0" * 64, print) is None
        True
    """
    from modelpress.store import file_sha256

    index = store / "index" / f"{key}.json"
    if not index.is_file():
        return None
    try:
        ref = json.loads(index.read_text())
        result_path = store / "results" / f"{ref['result_sha256']}.json"
        if file_sha256(result_path) != ref["result_sha256"]:
            raise ValueError("the stored result does not match its hash")
        stored = OptimizeResult.from_dict(json.loads(result_path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as e:
        log(f"stored result {key[:12]} is unreadable ({e}); measuring anew")
        return None
    for path, sha in ((stored.artifact_path, stored.artifact_sha256),
                      (stored.float_artifact_path, stored.float_artifact_sha256)):
        if not sha or not Path(path).is_file() or file_sha256(path) != sha:
            # Corrupt or missing: measure again; the new object replaces the corrupt one.
            log(f"stored artifact {path} is missing or corrupt; measuring anew")
            return None
    return stored


__all__ = ["OptimizeResult", "RESULT_FORMAT", "cached_result", "json_safe"]
