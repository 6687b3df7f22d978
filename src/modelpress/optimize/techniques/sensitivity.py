"""Per-layer quantization sensitivity, measured end to end on real inputs.

Which layers to keep in float when int8 breaks an accuracy budget is an empirical question (field notes:
MiniLM's sensitive layers are not simply "the FFN outputs"). Each candidate layer is tried on its own and
the whole model's output is compared with the reference (float) output on calibration inputs:

* ``leave_one_float``: the fully quantized model with *one* layer back in float; the layer's score is
  the output error it removes. Measures each layer in the company it will actually keep.
* ``quantize_one``: the float model with *one* layer quantized; the score is the error it causes alone.

The error is the relative squared error ``‖y − y_ref‖² / ‖y_ref‖²`` over all outputs (continuous, so it
ranks layers even where top-1 agreement would tie). Two ways to build the trial models:
``swap_sensitivity`` swaps modules in place (eager quantization, e.g. dynamic int8: no re-quantization,
cheap), ``requantize_sensitivity`` re-runs a quantization callable per layer (FX static/QAT, where a
float module cannot be swapped into an int8 graph).

Example:
    >>> import copy, torch
    >>> from torch import nn
    >>> from torch.ao.quantization import quantize_dynamic
    >>> f = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    >>> q = quantize_dynamic(copy.deepcopy(f), {nn.Linear}, dtype=torch.qint8)
    >>> x = torch.randn(16, 8)
    >>> rep = swap_sensitivity(f, q, ["0", "2"], x, reference=f(x).detach())
    >>> sorted(rep.ranking())
    ['0', '2']
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Literal, Sequence

import torch
from torch import nn

from modelpress.errors import UserInputError
from modelpress.optimize.measure import predict
from modelpress.optimize.spec import Inputs

Method = Literal["leave_one_float", "quantize_one"]
METHODS: tuple[str, ...] = ("leave_one_float", "quantize_one")


@dataclass(frozen=True)
class LayerSensitivity:
    """One layer's measurement: the trial model's output error and the layer's effect on it.

    Example:
        >>> LayerSensitivity("fc1", error=0.01, effect=0.04).effect
        0.04
    """

    name: str
    error: float  # relative squared output error of the trial model vs the reference
    effect: float  # leave_one_float: error removed by keeping it float; quantize_one: error it causes


@dataclass(frozen=True)
class SensitivityReport:
    """All layers, most sensitive first, with how they were measured."""

    method: str
    baseline_error: float  # all candidates quantized (leave_one_float) or none (quantize_one: 0.0)
    layers: tuple[LayerSensitivity, ...]
    samples: int
    seconds: float

    def ranking(self) -> list[str]:
        """Layer names, most sensitive first.

        Example:
            >>> SensitivityReport("quantize_one", 0.0, (LayerSensitivity("a", 0.2, 0.2),), 8, 0.1).ranking()
            ['a']
        """
        return [s.name for s in self.layers]

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["layers"] = [asdict(s) for s in self.layers]
        return d


def relative_error(outputs: torch.Tensor, reference: torch.Tensor) -> float:
    """``‖outputs − reference‖² / ‖reference‖²`` (0 = identical).

    Example:
        >>> relative_error(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 2.0]))
        0.2
    """
    ref = reference.float()
    den = float((ref ** 2).sum())
    if den == 0.0:
        den = 1.0  # an all-zero reference: fall back to the absolute squared error
    return float(((outputs.float() - ref) ** 2).sum()) / den


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise UserInputError(f"sensitivity method {method!r} is unknown; use one of {', '.join(METHODS)}")


def _get(root: nn.Module, name: str) -> nn.Module:
    return root.get_submodule(name)


def _set(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, attr, module)


def _report(method: str, baseline: float, errors: dict[str, float], samples: int, t0: float) -> SensitivityReport:
    if method == "leave_one_float":
        layers = [LayerSensitivity(n, e, baseline - e) for n, e in errors.items()]
    else:
        layers = [LayerSensitivity(n, e, e) for n, e in errors.items()]
    # Stable order for ties: by effect, then by name, so equal inputs give equal rankings.
    layers.sort(key=lambda s: (-s.effect, s.name))
    return SensitivityReport(method=method, baseline_error=baseline, layers=tuple(layers), samples=samples,
                             seconds=time.perf_counter() - t0)


def swap_sensitivity(float_model: nn.Module, quant_model: nn.Module, candidates: Sequence[str], inputs: Inputs,
                     *, reference: torch.Tensor, method: Method = "leave_one_float",
                     batch_size: int = 256) -> SensitivityReport:
    """Measure each candidate by swapping its float/quantized module between two same-shaped models.

    ``float_model`` and ``quant_model`` must share module names (eager quantization replaces modules in
    place). Both are restored before returning, even on error.
    """
    _check_method(method)
    missing = [n for n in candidates if n not in dict(quant_model.named_modules())]
    if missing:
        raise UserInputError(f"sensitivity candidates not in the quantized model: {', '.join(missing)}")
    t0 = time.perf_counter()
    host, donor = (quant_model, float_model) if method == "leave_one_float" else (float_model, quant_model)
    if method == "leave_one_float":
        baseline = relative_error(predict(quant_model, inputs, batch_size=batch_size), reference)
    else:
        baseline = 0.0
    errors: dict[str, float] = {}
    for name in candidates:
        original = _get(host, name)
        # The donor module is borrowed, not copied: it runs read-only under inference mode.
        _set(host, name, _get(donor, name))
        try:
            errors[name] = relative_error(predict(host, inputs, batch_size=batch_size), reference)
        finally:
            _set(host, name, original)
    n = int((inputs if isinstance(inputs, torch.Tensor) else inputs[0]).shape[0])
    return _report(method, baseline, errors, n, t0)


def requantize_sensitivity(quantize: Callable[[tuple[str, ...]], nn.Module], candidates: Sequence[str],
                           inputs: Inputs, *, reference: torch.Tensor, method: Method = "leave_one_float",
                           quantized_model: nn.Module | None = None, base_keep_float: Sequence[str] = (),
                           batch_size: int = 256) -> SensitivityReport:
    """Measure each candidate by re-running ``quantize(keep_float)`` with that layer float (or alone quantized).

    ``quantize`` maps a tuple of module names to keep in float to a quantized model. ``quantized_model``
    (all candidates quantized) saves one run for the leave_one_float baseline.

    Example:
        >>> from torch.ao.quantization import quantize_dynamic
        >>> f = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
        >>> def quantize(keep):
        ...     return quantize_dynamic(f, {n for n in ("0", "2") if n not in keep}, inplace=False)
        >>> x = torch.randn(16, 8)
        >>> requantize_sensitivity(quantize, ["0", "2"], x, reference=f(x).detach()).samples
        16
    """
    _check_method(method)
    t0 = time.perf_counter()
    base = tuple(base_keep_float)
    if method == "leave_one_float":
        full = quantized_model if quantized_model is not None else quantize(base)
        baseline = relative_error(predict(full, inputs, batch_size=batch_size), reference)
    else:
        baseline = 0.0
    errors: dict[str, float] = {}
    for name in candidates:
        keep = base + ((name,) if method == "leave_one_float" else tuple(c for c in candidates if c != name))
        errors[name] = relative_error(predict(quantize(keep), inputs, batch_size=batch_size), reference)
    n = int((inputs if isinstance(inputs, torch.Tensor) else inputs[0]).shape[0])
    return _report(method, baseline, errors, n, t0)


__all__ = ["LayerSensitivity", "METHODS", "SensitivityReport", "relative_error", "requantize_sensitivity",
           "swap_sensitivity"]
