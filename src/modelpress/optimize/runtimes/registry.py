"""Runtime registry: name → adapter, chosen once here instead of an if/elif in every caller.

Adding a runtime = one module in this folder with a class implementing ``base.Runtime`` plus one line in
``_FACTORIES``. Adapters are built lazily and cached; importing this module imports no toolkit.

Example:
    >>> sorted(runtime_names())
    ['onnxruntime', 'openvino', 'torch']
    >>> get_runtime("tensorrt")
    Traceback (most recent call last):
    ...
    modelpress.optimize.errors.RecipeError: unknown runtime 'tensorrt'; known runtimes: onnxruntime, openvino, torch
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from modelpress.optimize.errors import RecipeError

if TYPE_CHECKING:
    from modelpress.optimize.runtimes.base import Runtime

# name → "module:Class"; the module is imported only when the runtime is first asked for.
_FACTORIES: dict[str, str] = {
    "torch": "modelpress.optimize.runtimes.torch_rt:TorchRuntime",
    "onnxruntime": "modelpress.optimize.runtimes.onnxruntime_rt:OnnxRuntime",
    "openvino": "modelpress.optimize.runtimes.openvino_rt:OpenVinoRuntime",
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


def require_runtime(name: str) -> "Runtime":
    """The adapter for ``name`` if it is usable on this host, else ``RuntimeUnavailableError`` with the reason."""
    from modelpress.optimize.runtimes.base import RuntimeUnavailableError

    rt = get_runtime(name)
    reason = rt.is_available()
    if reason is not None:
        raise RuntimeUnavailableError(f"runtime {name!r} is not usable on this worker: {reason}")
    return rt


__all__ = ["AUTO", "available_runtimes", "get_runtime", "require_runtime", "runtime_names"]
