"""Runtime registry: name → adapter, chosen once here instead of an if/elif in every caller.

Adding a runtime = one module in this folder with a class implementing ``base.Runtime`` plus one line in
``_FACTORIES``. Adapters are built lazily and cached; importing this module imports no toolkit.

Example:
    >>> sorted(runtime_names())
    ['onnxruntime', 'openvino', 'torch']
    >>> get_runtime("tensorrt")
    Traceback (most recent call last):
    ...
    modelpress.errors.RecipeError: unknown runtime 'tensorrt'; known runtimes: onnxruntime, openvino, torch
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from modelpress.errors import RecipeError

if TYPE_CHECKING:
    from modelpress.optimize.runtimes.base import Runtime

# name → "module:Class"; the module is imported only when the runtime is first asked for.
_FACTORIES: dict[str, str] = {
    "torch": "modelpress.optimize.runtimes.torch_rt:TorchRuntime",
    "onnxruntime": "modelpress.optimize.runtimes.onnxruntime_rt:OnnxRuntime",
    "openvino": "modelpress.optimize.runtimes.openvino_rt:OpenVinoRuntime",
}
# The packages each runtime needs, checked without importing them (``installed_runtimes``): a Celery parent
# must not import torch or a toolkit that starts threads before it forks its children (field notes).
_PACKAGES: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "onnxruntime": ("onnx", "onnxscript", "onnxruntime"),
    "openvino": ("openvino", "nncf"),
}
#: Names a recipe may use: the registered runtimes plus "auto" (build each, keep the best by measurement).
AUTO = "auto"
_cache: dict[str, "Runtime"] = {}


def runtime_names() -> list[str]:
    """The registered runtime names (without ``auto``)."""
    return sorted(_FACTORIES)


def get_runtime(name: str) -> "Runtime":
    """The adapter for ``name``; an unknown name raises ``RecipeError`` listing the known ones."""
    if name not in _FACTORIES:
        raise RecipeError(f"unknown runtime {name!r}; known runtimes: {', '.join(sorted(_FACTORIES))}")
    if name not in _cache:
        mod_name, cls_name = _FACTORIES[name].split(":")
        _cache[name] = getattr(importlib.import_module(mod_name), cls_name)()
    return _cache[name]


def available_runtimes() -> dict[str, str | None]:
    """Every registered runtime → None if usable here, else the reason (for worker start-up logs).

    Example:
        >>> available_runtimes()["torch"] is None
        True
    """
    out: dict[str, str | None] = {}
    for n in runtime_names():
        try:
            out[n] = get_runtime(n).is_available()
        except ImportError as e:  # the adapter module itself could not be imported
            out[n] = f"{n} adapter could not be imported: {e}"
    return out


def installed_runtimes() -> dict[str, str | None]:
    """Every registered runtime → None if its packages are installed, else what is missing; imports nothing.

    What a worker advertises at start (the full ``is_available`` check runs in the child, per job).

    Example:
        >>> installed_runtimes()["torch"] is None
        True
    """
    import importlib.util

    out: dict[str, str | None] = {}
    for n in runtime_names():
        missing = [p for p in _PACKAGES.get(n, ()) if importlib.util.find_spec(p) is None]
        out[n] = f"{', '.join(missing)} not installed" if missing else None
    return out


def require_runtime(name: str) -> "Runtime":
    """The adapter for ``name`` if it is usable on this host, else ``RuntimeUnavailableError`` with the reason."""
    from modelpress.optimize.runtimes.base import RuntimeUnavailableError

    rt = get_runtime(name)
    reason = rt.is_available()
    if reason is not None:
        raise RuntimeUnavailableError(f"runtime {name!r} is not usable on this worker: {reason}")
    return rt


def runtime_for_path(path: str | os.PathLike[str]) -> "Runtime | None":
    """The runtime whose artifact suffix ``path`` has (``.mpz`` torch, ``.onnx`` onnxruntime, ...), else None.

    Example:
        >>> runtime_for_path("a/b.onnx").name
        'onnxruntime'
    """
    suffix = Path(path).suffix.lower()
    for n in runtime_names():
        try:
            rt = get_runtime(n)
        except ImportError:
            continue
        if rt.suffix == suffix:
            return rt
    return None


__all__ = ["AUTO", "available_runtimes", "installed_runtimes", "get_runtime", "require_runtime", "runtime_for_path", "runtime_names"]
