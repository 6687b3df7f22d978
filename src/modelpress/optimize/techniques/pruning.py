"""Pruning steps: unstructured magnitude (zeros in dense tensors) and structured (channels removed).

Two very different promises, kept apart on purpose:

* ``prune_l1_unstructured`` sets the smallest-|w| weights to zero and makes that permanent. Dense
  storage and dense kernels do not care about zeros, so the artifact does not shrink and nothing gets
  faster (field notes: "L1 unstructured 50 % changes neither size nor latency"). The step reports the
  real sparsity and, labelled as such, how many bytes a *compressed* copy of the state dict would take
  — never as the artifact size.
* ``prune_structured`` removes whole channels/neurons with Torch-Pruning's dependency graph, so coupled
  layers (conv → BN → next conv, conv → flatten → linear) shrink together and the model really gets
  smaller and faster. The output layer is never pruned. The new layer shapes are recorded in the step's
  meta, and ``rebuild`` re-creates them on a freshly built float model before the weights are loaded.

Example:
    >>> from modelpress.optimize.recipes import StructuredPruneConfig
    >>> from modelpress.optimize.techniques.registry import handlers
    >>> StructuredPruneConfig in handlers()
    True
"""

from __future__ import annotations

import io
import zlib
from typing import Any

import torch
from torch import nn

from modelpress.errors import ModelLoadError, UserInputError
from modelpress.optimize.measure import as_tuple, count_flops, count_params
from modelpress.optimize.recipes import L1UnstructuredPruneConfig, StructuredPruneConfig
from modelpress.optimize.techniques.registry import StepContext, StepOutput, register_handler
from modelpress.optimize.techniques.training import is_quantized
from modelpress.optimize.spec import Inputs

_PRUNABLE: dict[str, type[nn.Module]] = {"Linear": nn.Linear, "Conv2d": nn.Conv2d, "Conv1d": nn.Conv1d}

# What "the compressed size" means in every meta dict below; it is not the artifact's size.
COMPRESSED_SIZE_NOTE = ("zlib (level 6) of torch.save(state_dict) bytes: what a sparse-aware/compressed "
                        "store could hold; the artifact itself is saved dense and does not shrink")


# ------------------------------------------------------------------------ unstructured (L1)
def state_dict_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of ``torch.save(model.state_dict())`` dense and after zlib (zeros compress, dense files don't).

    Example:
        >>> m = torch.nn.Linear(256, 256)
        >>> with torch.no_grad():
        ...     _ = m.weight.zero_()
        >>> b = state_dict_bytes(m)
        >>> b["zlib_state_dict_bytes"] < b["dense_state_dict_bytes"] / 10
        True
    """
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    raw = buf.getvalue()
    return {"dense_state_dict_bytes": len(raw), "zlib_state_dict_bytes": len(zlib.compress(raw, 6))}


def layer_sparsity(model: nn.Module, types: tuple[type[nn.Module], ...] = tuple(_PRUNABLE.values())) -> dict[str, float]:
    """Fraction of exactly-zero weights per Linear/Conv layer, by module name.

    Example:
        >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False))
        >>> with torch.no_grad():
        ...     _ = m[0].weight.zero_()
        >>> layer_sparsity(m)
        {'0': 1.0}
    """
    return {name: float((m.weight == 0).float().mean()) for name, m in model.named_modules() if isinstance(m, types)}


@register_handler(L1UnstructuredPruneConfig)
class L1UnstructuredPruneHandler:
    """Zero the smallest weights per layer (``scope="layer"``) or across all layers (``"global"``)."""

    def apply(self, model: nn.Module, cfg: L1UnstructuredPruneConfig, ctx: StepContext) -> StepOutput:
        import torch.nn.utils.prune as prune

        types = tuple(_PRUNABLE[t] for t in cfg.module_types)
        targets = [(m, "weight") for m in model.modules() if isinstance(m, types)]
        if not targets:
            raise UserInputError(f"prune_l1_unstructured found no {'/'.join(cfg.module_types)} layer"
                                 + (" (the model is already int8: prune before quantizing)" if is_quantized(model) else ""))
        before = state_dict_bytes(model)
        if cfg.scope == "global":
            prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=cfg.amount)
        else:
            for m, name in targets:
                prune.l1_unstructured(m, name, amount=cfg.amount)
        for m, name in targets:
            prune.remove(m, name)  # make permanent: plain weights with zeros, no weight_orig/weight_mask pair
        zeros = sum(int((m.weight == 0).sum()) for m, _ in targets)
        total = sum(m.weight.numel() for m, _ in targets)
        after = state_dict_bytes(model)
        return StepOutput(model, {
            "sparsity": zeros / total,
            "pruned_layers": len(targets),
            "layer_sparsity": layer_sparsity(model, types),
            "compressed_size": {
                "note": COMPRESSED_SIZE_NOTE,
                "dense_state_dict_bytes": after["dense_state_dict_bytes"],
                "zlib_state_dict_bytes_before": before["zlib_state_dict_bytes"],
                "zlib_state_dict_bytes_after": after["zlib_state_dict_bytes"],
                "zlib_ratio": before["zlib_state_dict_bytes"] / after["zlib_state_dict_bytes"],
            },
        })

    def rebuild(self, model: nn.Module, cfg: L1UnstructuredPruneConfig, meta: dict[str, Any], *, engine: str) -> nn.Module:
        return model  # structure unchanged: the zeros come back with the weights


# ------------------------------------------------------------------------ structured (Torch-Pruning)
def _is_shape_attr(v: object) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return True
    return isinstance(v, (tuple, list)) and len(v) > 0 and all(isinstance(x, int) and not isinstance(x, bool) for x in v)


def module_structure(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per module: its integer shape attributes (``out_channels``, ``in_features``, …) and tensor shapes.

    This is what structured pruning changes, so the difference before/after is exactly what ``rebuild``
    must re-create on a fresh model.

    Example:
        >>> module_structure(torch.nn.Linear(3, 2))[""]["attrs"]
        {'in_features': 3, 'out_features': 2}
    """
    out: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        attrs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(m).items()
                 if not k.startswith("_") and _is_shape_attr(v)}
        tensors = {k: list(t.shape) for k, t in [*m._parameters.items(), *m._buffers.items()] if t is not None}
        out[name] = {"attrs": attrs, "tensors": tensors}
    return out


def structure_diff(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What changed per module: new attribute values and new tensor shapes (JSON-able).

    Example:
        >>> structure_diff(module_structure(torch.nn.Linear(4, 2)), module_structure(torch.nn.Linear(4, 1)))
        {'': {'attrs': {'out_features': 1}, 'tensors': {'weight': [1, 4], 'bias': [1]}}}
    """
    diff: dict[str, dict[str, Any]] = {}
    for name, a in after.items():
        b = before.get(name)
        if b is None:
            raise RuntimeError(f"structured pruning created a new module {name!r}; cannot record it for reloading")
        attrs = {k: v for k, v in a["attrs"].items() if b["attrs"].get(k) != v}
        tensors = {k: v for k, v in a["tensors"].items() if b["tensors"].get(k) != v}
        if attrs or tensors:
            diff[name] = {"attrs": attrs, "tensors": tensors}
    return diff


def apply_structure(model: nn.Module, changes: dict[str, dict[str, Any]]) -> nn.Module:
    """Resize ``model``'s modules in place to the recorded shapes (values are loaded afterwards).

    Example:
        >>> m = apply_structure(torch.nn.Linear(4, 2), {"": {"attrs": {"out_features": 1},
        ...                                                  "tensors": {"weight": [1, 4], "bias": [1]}}})
        >>> m.weight.shape, m.out_features
        (torch.Size([1, 4]), 1)
    """
    modules = dict(model.named_modules())
    for name, change in changes.items():
        m = modules.get(name)
        if m is None:
            raise ModelLoadError(f"the artifact's structured-pruning record names module {name!r}, which the model "
                                 "does not have: the model factory changed since the artifact was made")
        for k, v in change["attrs"].items():
            setattr(m, k, tuple(v) if isinstance(getattr(m, k, None), tuple) else v)
        for k, shape in change["tensors"].items():
            if k in m._parameters and m._parameters[k] is not None:
                old = m._parameters[k]
                m._parameters[k] = nn.Parameter(torch.empty(shape, dtype=old.dtype), requires_grad=old.requires_grad)
            elif k in m._buffers and m._buffers[k] is not None:
                m._buffers[k] = torch.empty(shape, dtype=m._buffers[k].dtype)
            else:
                raise ModelLoadError(f"the artifact's structured-pruning record names tensor {name}.{k}, which the "
                                     "model does not have")
    return model


_ROOT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)

# Recurrent layers whose hidden size prune_structured can shrink: one layer, one direction, no projection.
_RNN_TYPES: tuple[type[nn.Module], ...] = (nn.LSTM, nn.GRU)
_RNN_GATES = {nn.LSTM: 4, nn.GRU: 3}
# Recurrent modules Torch-Pruning's dependency graph cannot see through (or that we have no pruner for).
_UNSUPPORTED_RECURRENT = (nn.RNN, nn.RNNCell, nn.LSTMCell, nn.GRUCell)


class _RecurrentPruner:
    """Torch-Pruning pruning function for the hidden size of a one-layer, unidirectional LSTM/GRU.

    Torch-Pruning 1.6's own ``LSTMPruner`` indexes the gate-stacked weights along the wrong dimensions
    (an IndexError on the zoo's LSTM) and it has none for GRU. PyTorch stacks the gates along dim 0:
    ``weight_ih`` is ``[gates*H, in]``, ``weight_hh`` is ``[gates*H, H]``, biases ``[gates*H]``. Removing
    hidden unit ``j`` removes row ``j + g*H`` of every gate ``g`` and, in ``weight_hh``, column ``j`` (the
    recurrent input). Pruning the layer's input removes columns of ``weight_ih``.
    """

    @staticmethod
    def _keep(n: int, idxs: Any) -> torch.Tensor:
        drop = {int(i) for i in idxs}
        return torch.tensor([i for i in range(n) if i not in drop], dtype=torch.long)

    @staticmethod
    def _set(layer: nn.RNNBase, name: str, t: torch.Tensor) -> None:
        old = getattr(layer, name)
        # setattr on an RNN updates its cached flat-weight list as well.
        setattr(layer, name, nn.Parameter(t.contiguous().clone(), requires_grad=old.requires_grad))

    def prune_out_channels(self, layer: nn.RNNBase, idxs: Any) -> nn.Module:
        h = layer.hidden_size
        keep = self._keep(h, idxs)
        rows = torch.cat([keep + g * h for g in range(_RNN_GATES[type(layer)])])
        with torch.no_grad():
            for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
                p = getattr(layer, name, None)
                if p is None:
                    continue
                t = p.data[rows]
                if name == "weight_hh_l0":
                    t = t[:, keep]
                self._set(layer, name, t)
        layer.hidden_size = len(keep)
        layer._init_flat_weights()
        return layer

    def prune_in_channels(self, layer: nn.RNNBase, idxs: Any) -> nn.Module:
        keep = self._keep(layer.input_size, idxs)
        with torch.no_grad():
            self._set(layer, "weight_ih_l0", layer.weight_ih_l0.data[:, keep])
        layer.input_size = len(keep)
        layer._init_flat_weights()
        return layer

    def get_out_channels(self, layer: nn.RNNBase) -> int:
        return layer.hidden_size

    def get_in_channels(self, layer: nn.RNNBase) -> int:
        return layer.input_size


def _recurrent_pruner() -> Any:
    import torch_pruning as tp

    # Built lazily: Torch-Pruning is an optional import of this module.
    cls = type("RecurrentPruner", (_RecurrentPruner, tp.pruner.BasePruningFunc), {})
    return cls()


def _check_recurrent(modules: dict[str, nn.Module], ignored: list[str]) -> list[str]:
    """Refuse, up front, recurrent layers whose channels cannot be removed correctly; return the prunable ones."""
    bad = []
    for name, m in modules.items():
        if any(name == i or name.startswith(i + ".") for i in ignored):
            continue
        if isinstance(m, _UNSUPPORTED_RECURRENT):
            bad.append(f"{name} ({type(m).__name__})")
        elif isinstance(m, _RNN_TYPES) and type(m) not in _RNN_GATES:
            bad.append(f"{name} ({type(m).__name__}, a subclass)")
        elif isinstance(m, _RNN_TYPES) and (m.num_layers != 1 or m.bidirectional or getattr(m, "proj_size", 0)):
            bad.append(f"{name} ({type(m).__name__} with num_layers={m.num_layers}, bidirectional={m.bidirectional}, "
                       f"proj_size={getattr(m, 'proj_size', 0)})")
    if bad:
        raise UserInputError(
            "prune_structured supports recurrent layers only as one-layer, unidirectional nn.LSTM/nn.GRU without "
            f"proj_size; not supported here: {', '.join(bad)}. Add them to `ignore` (their neighbours' channels "
            "coupled to them are then left alone too) or use prune_l1_unstructured / quantize_dynamic")
    return [n for n, m in modules.items() if type(m) in _RNN_GATES and n not in ignored]


def output_layers(model: nn.Module, example: Inputs) -> list[str]:
    """Name of the last Linear/Conv layer run in a forward pass: the output layer, never to be pruned.

    Pruning its outputs would change the model's output size (e.g. drop classes), so it is excluded
    automatically. "Last executed" is a heuristic that holds for single-head models (the zoo's).

    Example:
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
        >>> output_layers(m, torch.randn(1, 4))
        ['2']
    """
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda _m, _i, _o, n=name: order.append(n))
             for name, m in model.named_modules() if isinstance(m, _ROOT_TYPES)]
    try:
        with torch.no_grad():
            model(*as_tuple(example))
    finally:
        for h in hooks:
            h.remove()
    return order[-1:]


def _output_shape(model: nn.Module, example: Inputs) -> list[int]:
    with torch.no_grad():
        out = model(*as_tuple(example))
    if not isinstance(out, torch.Tensor):
        raise UserInputError(f"prune_structured needs a model that returns one tensor, got {type(out).__name__}")
    return list(out.shape)


def _channel_summary(before: dict[str, dict[str, Any]], diff: dict[str, dict[str, Any]]) -> dict[str, dict[str, list[int]]]:
    # Human-readable "features.3: out_channels 64→32", kept beside the rebuild record.
    return {name: {k: [before[name]["attrs"][k], v] for k, v in ch["attrs"].items() if isinstance(v, int)}
            for name, ch in diff.items() if ch["attrs"]}


@register_handler(StructuredPruneConfig)
class StructuredPruneHandler:
    """Torch-Pruning (DepGraph) magnitude pruning of whole channels, coupled layers together."""

    def apply(self, model: nn.Module, cfg: StructuredPruneConfig, ctx: StepContext) -> StepOutput:
        import torch_pruning as tp

        if is_quantized(model):
            raise UserInputError("prune_structured cannot prune an int8-converted model: put it before the "
                                 "quantization step in the recipe")
        model.eval()  # tracing in eval mode: BN uses running statistics and keeps them intact
        modules = dict(model.named_modules())
        unknown = [n for n in cfg.ignore if n not in modules]
        if unknown:
            raise UserInputError(f"prune_structured.ignore names modules that do not exist: {', '.join(unknown)}; "
                                 f"modules with weights: {', '.join(n for n, m in modules.items() if isinstance(m, _ROOT_TYPES))}")
        example = ctx.spec.make_input(2)
        auto_ignored = output_layers(model, example)
        ignored = sorted(set(auto_ignored) | set(cfg.ignore))
        probe = ctx.spec.make_input(1)
        params_before, flops_before = count_params(model), count_flops(model, probe)
        shape_before = _output_shape(model, example)
        before = module_structure(model)
        recurrent = _check_recurrent(modules, ignored)
        rnn_pruner = _recurrent_pruner()

        try:
            pruner = tp.pruner.BasePruner(
                model, list(as_tuple(example)),
                importance=tp.importance.GroupMagnitudeImportance(p=1 if cfg.importance == "l1" else 2),
                global_pruning=cfg.global_ranking,
                pruning_ratio=cfg.amount,
                ignored_layers=[modules[n] for n in ignored],
                # Our LSTM/GRU pruning function replaces Torch-Pruning's (wrong for LSTM, absent for GRU).
                customized_pruners={t: rnn_pruner for t in _RNN_TYPES},
                root_module_types=[nn.modules.conv._ConvNd, nn.Linear, *_RNN_TYPES],
            )
            pruned_groups, refused_groups = 0, 0
            for group in pruner.step(interactive=True):
                # DepGraph's own guard: refuse a group that would remove every channel of some layer.
                if not pruner.DG.check_pruning_group(group):
                    refused_groups += 1
                    continue
                group.prune()
                pruned_groups += 1
        except (IndexError, KeyError, AssertionError, NotImplementedError) as e:
            # Torch-Pruning's dependency graph fails this way on layers it cannot follow; the model may be
            # half pruned, so it must not be used further.
            raise UserInputError(
                f"prune_structured: Torch-Pruning could not prune {type(model).__name__} consistently "
                f"({type(e).__name__}: {str(e)[:200]}); add the layers it cannot handle to `ignore` (module types "
                f"here: {', '.join(sorted({type(m).__name__ for m in modules.values() if not list(m.children())}))})"
            ) from None
        model.eval()

        diff = structure_diff(before, module_structure(model))
        if not diff:
            raise UserInputError(f"prune_structured removed no channel (amount={cfg.amount}): raise the amount, "
                                 f"or check that not every layer is ignored ({', '.join(ignored)})")
        touched_ignored = [n for n in ignored if n in diff and any(k.startswith("out_") for k in diff[n]["attrs"])]
        if touched_ignored:
            raise RuntimeError(f"prune_structured pruned the outputs of ignored layers {touched_ignored}")
        # Layers Torch-Pruning cannot see into (e.g. attention that reshapes by a stored head count) can
        # be left inconsistent; a forward pass with the original output shape is the minimum proof.
        try:
            shape_after = _output_shape(model, example)
        except (RuntimeError, ValueError) as e:
            raise UserInputError(f"prune_structured left {type(model).__name__} unable to run ({str(e)[:200]}); "
                                 "add the layers it cannot prune consistently (e.g. attention projections) to "
                                 "`ignore`") from None
        if shape_after != shape_before:
            raise UserInputError(f"prune_structured changed the output shape {shape_before} → {shape_after}; add the "
                                 "output layer to `ignore`")
        params_after, flops_after = count_params(model), count_flops(model, probe)
        ctx.log(f"prune_structured: params {params_before} → {params_after}, FLOPs {flops_before} → {flops_after}")
        return StepOutput(model, {
            "structure": diff,  # what rebuild re-creates; the rest is for people
            "channels": _channel_summary(before, diff),
            "ignored_layers": ignored,
            "recurrent_layers": {n: {"type": type(modules[n]).__name__,
                                     "hidden_size": [before[n]["attrs"]["hidden_size"],
                                                     diff.get(n, {}).get("attrs", {}).get(
                                                         "hidden_size", before[n]["attrs"]["hidden_size"])]}
                                 for n in recurrent},
            "auto_ignored_output_layers": auto_ignored,
            "pruned_groups": pruned_groups,
            "refused_groups": refused_groups,
            "params_before": params_before,
            "params_after": params_after,
            "flops_before": flops_before,
            "flops_after": flops_after,
            "flops_ratio": flops_before / flops_after if flops_after else None,
        })

    def rebuild(self, model: nn.Module, cfg: StructuredPruneConfig, meta: dict[str, Any], *, engine: str) -> nn.Module:
        if "structure" not in meta:
            raise ModelLoadError("the artifact's prune_structured step has no recorded structure; re-run the job")
        return apply_structure(model, meta["structure"])


__all__ = ["COMPRESSED_SIZE_NOTE", "L1UnstructuredPruneHandler", "StructuredPruneHandler", "apply_structure",
           "layer_sparsity", "module_structure", "output_layers", "state_dict_bytes", "structure_diff"]
