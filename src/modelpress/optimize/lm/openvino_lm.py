"""A transformers causal LM in OpenVINO with its KV cache: export, NNCF weight-only compression, one file, a runner.

- ``export_lm(model, workdir)``: ``openvino.convert_model`` of a small wrapper around the caller's model that
  takes the past keys/values as flat tensors and returns the present ones (transformers 5 keeps them in a
  ``DynamicCache`` object, which a traced graph cannot carry), then made **stateful**: the past/present pairs
  become OpenVINO variables (``ReadValue``/``Assign``) held inside the infer request, as optimum-intel does it.
  Why stateful: the CPU plugin then fuses each layer's ``ReadValue → Concat → SDPA → Assign`` into one
  attention node that appends the new token to its own cache in place, where a graph with explicit
  past/present tensors concatenates the whole cache into a new output at every decode step and hands it
  back through Python (see ``export_lm`` for the numbers);
- ``compress_lm(ov_model, mode=..., group_size=...)``: ``nncf.compress_weights`` (int8_asym, int4_asym,
  int4_sym; AWQ and scale estimation from calibration rows); returns ``(model, meta)``, ``meta`` saying what
  precision the embedding, the LM head and the other layers ended up in, read back from the graph;
- ``save_lm`` / ``load_lm``: the runtime's one-file ``.ovz`` (``runtimes.openvino_rt``), and ``OpenVinoLM``,
  an ``lm.runner.LMRunner`` with greedy decoding.

The graph's inputs: ``input_ids``, ``attention_mask`` (past + new tokens, as transformers wants it),
``position_ids``, ``logits_index`` (which positions get logits: all of them for ``logits()``, the last one
for prefill and decode, which saves the LM head's vocabulary-wide product on every other prompt token) and
``beam_idx`` (rows of the cache to keep, ``arange(rows)`` for greedy: the CPU plugin's KV-cache fusion
matches only a graph that has it). Batch, new tokens and past length are all dynamic.

Example:
    >>> from modelpress.optimize.lm.openvino_lm import export_lm, save_lm, load_lm
    >>> from modelpress.optimize.lm.openvino_compress import compress_lm
    >>> ov_model = export_lm(model, tmp)                                         # doctest: +SKIP
    >>> q, meta = compress_lm(ov_model, mode="int4_asym", group_size=128)        # doctest: +SKIP
    >>> save_lm(q, tmp / "lm.ovz", meta)                                         # doctest: +SKIP
    >>> lm = load_lm(tmp / "lm.ovz", threads=1)                                  # doctest: +SKIP
    >>> nxt, state = lm.prefill(prompt, torch.ones_like(prompt))                 # doctest: +SKIP
    >>> nxt, state = lm.step(nxt, state)                                         # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import warnings
import weakref
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from modelpress.errors import ModelLoadError, RecipeError

#: What ``save_lm`` writes into the artifact's metadata, so that ``load_lm`` refuses a non-LM ``.ovz``.
KIND = "causal_lm"
IDS, MASK, POS, KEEP, BEAM = "input_ids", "attention_mask", "position_ids", "logits_index", "beam_idx"
LOGITS = "logits"
#: Plugin properties ``load_lm`` sets over the runtime's pinned-thread latency config: f32 arithmetic and an
#: f32 KV cache. On a host with AVX512_BF16 or AMX the CPU plugin would otherwise pick bf16 activations and a
#: u8 KV cache by itself, and the "float" OpenVINO model would no longer be the float model: the perplexity and
#: agreement of a compressed model must measure its weights, not the host. ``plugin_config`` overrides them.
#: The plugin's dynamic int8 quantization of activations in compressed-weight layers (group 32) is left on:
#: it is how OpenVINO serves int8/int4 weights (without it a 64-token int8 prefill took 7.4 ms instead of 2.4)
#: and it moved next-token agreement with float by < 1 point; ``execution()`` records its group size.
EXACT = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}


# --------------------------------------------------------------------------------------------------- export
class _FlatCacheLM(nn.Module):
    """The caller's causal LM as a function of flat tensors: past keys/values in, logits and present out.

    A traced graph can only take and return tensors; transformers 5 passes the KV cache as a ``DynamicCache``
    object (there is no legacy tuple API any more), so the cache is rebuilt here from ``past`` at every call.
    The caller's module is held, not copied, and never changed.
    """

    def __init__(self, lm: nn.Module, n_layers: int, keep_arg: bool) -> None:
        super().__init__()
        self.lm = lm
        self.n_layers = n_layers
        self.keep_arg = keep_arg

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                logits_index: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.lm.config)
        if len(cache.layers) != self.n_layers or len(past) != 2 * self.n_layers:
            raise RecipeError(f"the cache has {len(cache.layers)} layers, the export expected {self.n_layers}")
        for i, layer in enumerate(cache.layers):
            k, v = past[2 * i], past[2 * i + 1]
            # ``DynamicCache(ddp_cache_data)`` would concatenate the past onto an empty 1-D tensor, which torch
            # allows and OpenVINO's Concat refuses (rank 1 vs 4); initialising the layer and setting its
            # tensors gives the same cache without that op.
            layer.lazy_initialization(k, v)
            layer.keys, layer.values = k, v
        kwargs: dict[str, Any] = {"logits_to_keep": logits_index} if self.keep_arg else {}
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      cache=cache, use_cache=True, **kwargs)
        present = _cache_of(out)
        flat: list[torch.Tensor] = []
        for layer in present.layers:
            flat += [layer.keys, layer.values]
        return (out.logits, *flat)


def _cache_of(out: Any) -> Any:
    # transformers 5.25 names the returned cache ``cache`` (``past_key_values`` is deprecated).
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def _kv_layout(model: nn.Module) -> list[tuple[int, int]]:
    """(kv heads, head dim) of every layer, read from one real cache (configs spell head counts differently)."""
    from transformers.cache_utils import DynamicLayer

    with torch.no_grad():
        out = model(input_ids=torch.zeros(1, 2, dtype=torch.long), attention_mask=torch.ones(1, 2, dtype=torch.long),
                    use_cache=True)
    cache = _cache_of(out)
    layers = getattr(cache, "layers", None)
    if not layers:
        raise RecipeError(f"{type(model).__name__} returned no KV cache (use_cache=True): it cannot be exported "
                          "for decoding")
    odd = sorted({type(layer).__name__ for layer in layers if type(layer) is not DynamicLayer})
    if odd:
        # Sliding-window or other cache layers drop or transform tokens: flat past/present tensors would not
        # be the whole cache, and decoding would silently differ from transformers'.
        raise RecipeError(f"{type(model).__name__} uses cache layers {odd}; only full-attention models "
                          "(DynamicLayer caches, e.g. Llama, GPT-2) are exported with their KV cache")
    return [(int(layer.keys.shape[1]), int(layer.keys.shape[3])) for layer in layers]


def export_lm(model: nn.Module, workdir: Path | None = None) -> Any:
    """A transformers causal LM as a stateful OpenVINO model (KV cache in the infer request); float weights.

    The model is wrapped (``_FlatCacheLM``), traced by ``openvino.convert_model`` on an example with 2 rows,
    3 new tokens and 2 past tokens — more than one of each, so that no branch transformers takes for a single
    row, a single token or an empty cache is baked into the graph — and every dimension but the head sizes is
    left dynamic. Then ``apply_make_stateful_transformation`` turns each past/present pair into a variable,
    each variable is given an initializer (zeros of ``[rows, heads, 0, head_dim]``, rows from ``input_ids``:
    without it a reset state has 0 rows and the model answers nothing), and a ``beam_idx`` Gather is put on
    each read, which the CPU plugin's stateful-attention fusion requires.

    Stateful was chosen over explicit past/present inputs because it decodes faster and the plugin keeps the
    cache: on a random Llama (hidden 256, 4 layers, vocab 4096, f32), 1 thread, 64-token prompt, it decoded
    2240–2480 tokens/s where the same graph with explicit past/present tensors (two infer requests feeding
    each other's outputs, no copies) decoded 1380; prefill is on par once the mask is additive
    (``_additive_masks``). transformers' boolean attention mask is made a float additive one for that reason.

    The caller's model is not copied and not changed: it is put in eval mode for the trace and its mode is
    restored afterwards. ``workdir`` is accepted for the runtime adapters' signature; nothing is written.

    Example:
        >>> from transformers import AutoModelForCausalLM                             # doctest: +SKIP
        >>> model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)  # doctest: +SKIP
        >>> ov_model = export_lm(model)                                               # doctest: +SKIP
        >>> [p.any_name for p in ov_model.inputs]                                     # doctest: +SKIP
        ['input_ids', 'attention_mask', 'position_ids', 'logits_index', 'beam_idx']
    """
    from modelpress.optimize.hf_env import prepare_transformers

    prepare_transformers()
    import openvino as ov
    from openvino._offline_transformations import apply_make_stateful_transformation

    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        raise RecipeError(f"export_lm takes a transformers decoder-only causal LM, not {type(model).__name__}")
    odd = sorted({str(p.dtype) for p in model.parameters() if p.is_floating_point() and p.dtype != torch.float32})
    if odd:
        # The float export is the baseline every compressed model is compared with, and the cache inputs are
        # f32; a 16-bit model would also be patched by OpenVINO's tracer, i.e. changed under the caller.
        raise RecipeError(f"export_lm takes a float32 model; this one has {', '.join(odd)} weights "
                          "(load it with dtype=torch.float32)")
    was_training = model.training
    model.eval()  # the trace runs forward: dropout must be off; the caller's mode comes back in ``finally``
    try:
        layout = _kv_layout(model)
        keep_arg = "logits_to_keep" in inspect.signature(model.forward).parameters
        wrapper = _FlatCacheLM(model, len(layout), keep_arg).eval()
        rows, new, past = 2, 3, 2
        example: list[torch.Tensor] = [
            torch.randint(0, int(getattr(config, "vocab_size", 2) or 2), (rows, new)),
            torch.ones(rows, past + new, dtype=torch.long),
            torch.arange(past, past + new).expand(rows, new).contiguous(),
            torch.arange(new),
        ]
        for heads, dim in layout:
            example += [torch.zeros(rows, heads, past, dim), torch.zeros(rows, heads, past, dim)]
        dyn2 = ov.PartialShape([-1, -1])
        shapes = [(dyn2, ov.Type.i64), (dyn2, ov.Type.i64), (dyn2, ov.Type.i64), (ov.PartialShape([-1]), ov.Type.i64)]
        for heads, dim in layout:
            shapes += [(ov.PartialShape([-1, heads, -1, dim]), ov.Type.f32)] * 2
        try:
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                # The tracer warns at every Python branch on a shape. Those transformers takes (cache empty?
                # one query token? mask longer than the keys?) are decided by the example's sizes, chosen
                # above so that the branch taken is the general one; the tests decode 1-row, 1-token prompts.
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                # convert_model traces with torch.jit.trace, deprecated in torch 2.13; torch.export is not an
                # option here yet: it specializes a past length of 0 (the prefill's empty cache) and 1.
                warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace", category=DeprecationWarning)
                warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing", category=FutureWarning)
                ov_model = ov.convert_model(wrapper, example_input=tuple(example), input=shapes)
        except Exception as e:  # noqa: BLE001 - the converter's errors are long traces; say what failed
            raise RecipeError(f"openvino.convert_model could not convert {type(model).__name__} with its KV cache "
                              f"({type(e).__name__}: {' '.join(str(e).split())[:400]})") from e
    finally:
        model.train(was_training)

    past_names = [f"past_key_values.{i}.{kv}" for i in range(len(layout)) for kv in ("key", "value")]
    present_names = [f"present.{i}.{kv}" for i in range(len(layout)) for kv in ("key", "value")]
    for port, name in zip(ov_model.inputs, [IDS, MASK, POS, KEEP, *past_names]):
        port.get_tensor().set_names({name})
    for port, name in zip(ov_model.outputs, [LOGITS, *present_names]):
        port.get_tensor().set_names({name})
    if not keep_arg:  # the forward has no ``logits_to_keep``: the traced input is unused; logits for all positions
        _drop_unused_input(ov_model, KEEP)
    _additive_masks(ov_model)
    apply_make_stateful_transformation(ov_model, dict(zip(past_names, present_names)))
    _init_states_and_beam(ov_model)
    ov_model.set_rt_info(KIND, ["modelpress", "kind"])
    return ov_model


def _drop_unused_input(ov_model: Any, name: str) -> None:
    port = ov_model.input(name)
    if not port.get_target_inputs():
        ov_model.remove_parameter(port.get_node())


def _additive_masks(ov_model: Any) -> int:
    """Give every attention a float additive mask (0 / -max) where transformers made a boolean one; return how many.

    Same attention weights (a masked score gets -3.4e38 added instead of being dropped: exp gives 0 either
    way), but the CPU plugin's attention-with-KV-cache node, the one a stateful model decodes with, is slow on
    a boolean mask for a prompt of many tokens: a 64-token prefill of a 4-layer Llama (hidden 256, f32, 1
    thread) took 3.4 ms with it, 2.2 ms with the float mask, 2.4 ms as the same graph with explicit
    past/present (at 256 tokens: 29, 11, 9.5 ms). One Select per mask, shared by every layer that reads it.
    """
    import openvino as ov
    import openvino.opset13 as ops

    made: dict[tuple[str, int], Any] = {}
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() != "ScaledDotProductAttention" or op.get_input_size() < 4:
            continue
        src = op.input_value(3)
        if src.get_element_type() != ov.Type.boolean:
            continue
        key = (src.get_node().get_friendly_name(), src.get_index())
        if key not in made:
            made[key] = ops.select(src, ops.constant(np.float32(0.0)),
                                   ops.constant(np.float32(-np.finfo(np.float32).max))).output(0)
        op.input(3).replace_source_output(made[key])
    ov_model.validate_nodes_and_infer_types()
    return len(made)


def _init_states_and_beam(ov_model: Any) -> None:
    """Zero initializers for the cache variables (rows from ``input_ids``) and a ``beam_idx`` Gather on each read."""
    import openvino as ov
    import openvino.opset13 as ops

    ids = ov_model.input(IDS)
    rows = ops.gather(ops.shape_of(ids, output_type="i64"), ops.constant(np.array([0], np.int64)),
                      ops.constant(np.int64(0)))
    beam = ops.parameter(ov.PartialShape([-1]), ov.Type.i32, name=BEAM)
    beam.output(0).get_tensor().set_names({BEAM})
    reads = [op for op in ov_model.get_ordered_ops() if op.get_type_name() == "ReadValue"]
    for op in reads:
        shape = op.get_output_partial_shape(0)
        dims = [rows] + [ops.constant(np.array([0 if i == 2 else shape[i].get_length()], np.int64))
                         for i in (1, 2, 3)]
        zeros = ops.broadcast(ops.constant(np.zeros((), dtype=np.float32)).output(0), ops.concat(dims, 0))
        op.set_arguments([zeros.output(0)])
        consumers = list(op.output(0).get_target_inputs())
        reordered = ops.gather(op.output(0), beam, ops.constant(np.int64(0)))
        for c in consumers:
            c.replace_source_output(reordered.output(0))
    ov_model.add_parameters([beam])
    ov_model.validate_nodes_and_infer_types()


# --------------------------------------------------------------------------------------------------- file
def save_lm(ov_model: Any, path: Path, meta: Mapping[str, Any] | None = None) -> int:
    """Write the model as one ``.ovz`` (the OpenVINO runtime's layout, atomically); return its bytes.

    The artifact is ``runtimes.openvino_rt``'s: an uncompressed zip of ``model.xml``, ``model.bin`` (fp32 stays
    fp32) and ``modelpress.json``, whose ``detail`` holds ``meta`` plus ``kind: causal_lm``.

    Example:
        >>> q, meta = compress_lm(export_lm(model), mode="int8_asym", group_size=None)  # doctest: +SKIP
        >>> save_lm(q, Path("lm.ovz"), meta)                                            # doctest: +SKIP
        1441792
    """
    from modelpress.optimize.runtimes.base import Exported
    from modelpress.optimize.runtimes.openvino_rt import OpenVinoRuntime

    detail = {**dict(meta or {}), "kind": KIND}
    exported = Exported(runtime="openvino", handle=ov_model, input_names=[p.any_name for p in ov_model.inputs],
                        quantized=bool((meta or {}).get("mode")), meta=detail)
    return OpenVinoRuntime().save(exported, Path(path))


def load_lm(path: Path, threads: int, *, plugin_config: Mapping[str, Any] | None = None) -> OpenVinoLM:
    """An ``OpenVinoLM`` over a ``save_lm`` file, compiled for the CPU on ``threads`` threads.

    The plugin runs f32 with an f32 KV cache (``EXACT``); ``plugin_config`` sets any CPU property over that,
    e.g. ``{"INFERENCE_PRECISION_HINT": "bf16", "KV_CACHE_PRECISION": "u8"}`` for this host's own defaults.

    Example:
        >>> lm = load_lm(Path("lm.ovz"), threads=1)                                     # doctest: +SKIP
        >>> lm.logits(ids, mask).shape                                                  # doctest: +SKIP
        torch.Size([4, 32, 256])
    """
    import openvino as ov

    from modelpress.optimize.runtimes.openvino_rt import compile_config, read_ovz

    meta, xml, weights = read_ovz(Path(path))
    detail = meta.get("detail") or {}
    if detail.get("kind") != KIND:
        raise ModelLoadError(f"{path} is an OpenVINO artifact but not a causal LM (save_lm writes those)")
    core = ov.Core()
    model = core.read_model(xml.decode(), ov.Tensor(np.frombuffer(weights, dtype=np.uint8)))
    config = {**compile_config(threads), **EXACT, **dict(plugin_config or {})}
    compiled = core.compile_model(model, "CPU", config)
    return OpenVinoLM(compiled, detail)


# --------------------------------------------------------------------------------------------------- runner
class _Generation:
    """One prefill's decode state: the infer request holding its KV cache, the mask so far, each row's position.

    The cache lives in the request (a stateful model), so a state is a claim on that request: ``step`` hands
    the claim to the state it returns, and a request whose last state is gone (weakref) serves the next call.
    """

    __slots__ = ("request", "mask", "position", "live", "__weakref__")

    def __init__(self, request: Any, mask: np.ndarray, position: np.ndarray) -> None:
        self.request, self.mask, self.position, self.live = request, mask, position, True


class OpenVinoLM:
    """``LMRunner`` over a compiled stateful OpenVINO LM (``load_lm``): full logits, prefill, greedy steps.

    Example:
        >>> lm = load_lm(path, threads=1)                                               # doctest: +SKIP
        >>> nxt, st = lm.prefill(ids, torch.ones_like(ids))                             # doctest: +SKIP
        >>> nxt, st = lm.step(nxt, st)                                                  # doctest: +SKIP
    """

    def __init__(self, compiled: Any, meta: Mapping[str, Any] | None = None) -> None:
        self.compiled = compiled
        self.meta = dict(meta or {})
        self.input_names = [p.any_name for p in compiled.inputs]
        self._has_keep = KEEP in self.input_names
        self._requests: list[list[Any]] = []  # [request, weakref to the state holding it, or None]
        self.training = False  # the harness refuses models in training mode; this one never is

    # A request is free when no live state holds it. Created on demand: one, unless states are interleaved.
    def _request(self) -> Any:
        for slot in self._requests:
            if slot[1] is None or slot[1]() is None or not slot[1]().live:
                slot[1] = None
                return slot
        slot = [self.compiled.create_infer_request(), None]
        self._requests.append(slot)
        return slot

    def _run(self, request: Any, ids: np.ndarray, mask: np.ndarray, position: np.ndarray,
             keep: np.ndarray) -> np.ndarray:
        feed = {IDS: ids, MASK: mask, POS: position, BEAM: np.arange(ids.shape[0], dtype=np.int32)}
        if self._has_keep:
            feed[KEEP] = keep
        # share_inputs: no copy of the feed; the logits are the request's own buffer until its next call.
        request.infer(feed, share_inputs=True)
        return request.get_tensor(LOGITS).data

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[rows, tokens, vocab]`` float32 logits of whole rows, no cache (right padding is masked)."""
        ids, mask = _np_ids(input_ids), _np_ids(attention_mask)
        slot = self._request()
        slot[0].reset_state()
        rows, n = ids.shape
        position = np.broadcast_to(np.arange(n, dtype=np.int64), (rows, n)).copy()
        out = self._run(slot[0], ids, mask, position, np.arange(n, dtype=np.int64))
        return torch.from_numpy(np.array(out, dtype=np.float32, copy=True))

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, _Generation]:
        """The prompt's pass into a fresh cache; ``(greedy next ids [rows], state)``.

        Rows may be left-padded (positions count real tokens); a right-padded row has no next token to give.
        """
        ids, mask = _np_ids(input_ids), _np_ids(attention_mask)
        if not mask[:, -1].all():
            raise ValueError("prefill takes unpadded (or left-padded) prompts: a row ends in padding")
        position = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
        slot = self._request()
        slot[0].reset_state()
        out = self._run(slot[0], ids, mask, position, np.array([ids.shape[1] - 1], dtype=np.int64))
        state = _Generation(slot[0], mask, position[:, -1:])
        slot[1] = weakref.ref(state)
        return _greedy(out), state

    def step(self, next_ids: torch.Tensor, state: _Generation) -> tuple[torch.Tensor, _Generation]:
        """Feed ``next_ids`` ``[rows]`` through the cache; ``(next greedy ids, new state)``. ``state`` is spent."""
        if not isinstance(state, _Generation) or not state.live:
            raise ValueError("step takes the state the last prefill/step returned, once (its cache has moved on)")
        slot = next((s for s in self._requests if s[0] is state.request), None)
        if slot is None or slot[1] is None or slot[1]() is not state:
            raise ValueError("this state's cache was reused by another prefill")
        ids = _np_ids(next_ids).reshape(-1, 1)
        if ids.shape[0] != state.mask.shape[0]:
            raise ValueError(f"step got {ids.shape[0]} ids for a state of {state.mask.shape[0]} rows")
        state.live = False
        mask = np.concatenate([state.mask, np.ones((ids.shape[0], 1), np.int64)], axis=1)
        position = state.position + 1
        out = self._run(state.request, ids, mask, position, np.zeros(1, dtype=np.int64))
        new = _Generation(state.request, mask, position)
        slot[1] = weakref.ref(new)
        return _greedy(out), new

    def execution(self) -> dict[str, Any]:
        """How the CPU plugin runs it here (``OpenVinoCallable.execution``), plus the KV-cache precision.

        Example:
            >>> lm.execution()["inference_precision"]                                   # doctest: +SKIP
            'f32'
        """
        from modelpress.optimize.runtimes.openvino_rt import OpenVinoCallable

        out = OpenVinoCallable(self.compiled, self.input_names).execution()
        for key, prop in (("kv_cache_precision", "KV_CACHE_PRECISION"),):
            try:
                out[key] = self.compiled.get_property(prop).get_type_name()
            except (RuntimeError, AttributeError):
                pass
        return out

    def __repr__(self) -> str:
        return f"OpenVinoLM(inputs={self.input_names})"


def _np_ids(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(torch.as_tensor(t).detach().cpu().numpy().astype(np.int64, copy=False))


def _greedy(logits: np.ndarray) -> torch.Tensor:
    # argmax of the last position; numpy's argmax takes the first maximum, as torch's does
    return torch.from_numpy(np.asarray(logits[:, -1].argmax(-1), dtype=np.int64))


__all__ = ["BEAM", "EXACT", "IDS", "KEEP", "KIND", "LOGITS", "MASK", "OpenVinoLM", "POS", "export_lm", "load_lm", "save_lm"]
