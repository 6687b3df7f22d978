"""Find the layers of a transformer in an FX graph, and cut heads, FFN neurons and whole layers out of it.

An ``hf:`` model reaches the pipeline as a ``torch.export`` graph re-modularized into ``nn.Linear`` calls
(``sources.hf.as_graph``). Its structure is read from the graph, not from transformers' classes:

* an **attention block** is one ``scaled_dot_product_attention`` call; its query, key and value are the
  ``nn.Linear`` calls its three inputs come from (through views and transposes), its output projection the
  ``nn.Linear`` its result reaches the same way. Heads can be cut when the view that splits heads infers their
  count (``view(x, [B, L, -1, head_dim])``, as transformers writes it): then cutting ``head_dim`` rows of
  query/key/value and columns of the output projection is all it takes;
* an **FFN** is ``Linear → activation → Linear`` where each feeds only the next and the second maps back to
  the first's input width; its neurons are the first's rows and the second's columns;
* a **layer** is an attention block with its input (the hidden state its query, key and value share); layer
  ``i`` ends where layer ``i+1`` begins. Dropping layer ``i`` (never the last) points every use of its output
  at its input and removes what no longer runs.

Everything here is by module name, so the same cut applied to a graph built again from the config (an
artifact being loaded) or to the same model exported with a dynamic sequence length (training) gives the same
structure, and a state dict moves between them.

Example:
    >>> blocks = find_blocks(graph_module)  # doctest: +SKIP
    >>> [(b.q, b.heads, b.ffn_in) for b in blocks][:1]  # doctest: +SKIP
    [('model.encoder.layer.0.attention.self.query', 12, 'model.encoder.layer.0.intermediate.dense')]
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import fx, nn

_SHAPE_OPS = ("view", "reshape", "transpose", "permute", "contiguous", "clone", "_unsafe_view", "expand",
              "alias", "detach")
# Ops between a layer's FFN output projection and its residual add (dropout is inactive in an exported graph).
_PASS_THROUGH = ("dropout", "native_dropout", "clone", "alias", "detach")
_ACTIVATIONS = ("gelu", "relu", "silu", "tanh", "sigmoid", "gelu_", "relu_", "silu_")


@dataclass
class Block:
    """One transformer layer as found in the graph (module names are the graph's ``call_module`` targets)."""

    index: int
    q: str
    k: str
    v: str
    o: str
    head_dim: int
    heads: int
    heads_cuttable: bool
    input_node: str | None  # the hidden state q, k and v share: where the layer begins
    ffn_in: str | None = None
    ffn_out: str | None = None


def _op_name(n: fx.Node) -> str:
    t = n.target
    name = getattr(t, "__name__", None) or str(t)
    return name.split(".")[0] if "." in name and not name.startswith("aten") else name.replace("aten.", "").split(".")[0]


def _is_shape_op(n: fx.Node) -> bool:
    return n.op in ("call_function", "call_method") and _op_name(n) in _SHAPE_OPS


def _linear(gm: fx.GraphModule, n: Any) -> bool:
    if not isinstance(n, fx.Node) or n.op != "call_module":
        return False
    try:
        return isinstance(gm.get_submodule(str(n.target)), nn.Linear)
    except AttributeError:
        return False


def _back_to_linear(gm: fx.GraphModule, n: Any) -> tuple[fx.Node | None, list[fx.Node]]:
    """Follow ``n`` back through shape ops to an ``nn.Linear`` call; returns it and the shape ops passed."""
    seen: list[fx.Node] = []
    while isinstance(n, fx.Node) and _is_shape_op(n):
        seen.append(n)
        n = n.args[0]
    return (n if _linear(gm, n) else None), seen


def _forward_to_linear(gm: fx.GraphModule, n: fx.Node) -> fx.Node | None:
    while True:
        users = list(n.users)
        if len(users) != 1:
            return None
        u = users[0]
        if _linear(gm, u):
            return u
        if not _is_shape_op(u):
            return None
        n = u


def _head_split(ops: Iterable[fx.Node]) -> tuple[int | None, bool]:
    """(head_dim, heads inferred with -1) from the view that splits a projection into heads."""
    for n in ops:
        if _op_name(n) in ("view", "reshape", "_unsafe_view") and len(n.args) > 1:
            shape = n.args[1]
            if isinstance(shape, (list, tuple)) and len(shape) == 4 and isinstance(shape[3], int):
                return int(shape[3]), shape[2] == -1
    return None, False


def find_blocks(gm: fx.GraphModule) -> list[Block]:
    """The transformer layers of ``gm`` in graph order, with their FFNs; empty when it has none.

    Example:
        >>> find_blocks(torch.fx.symbolic_trace(torch.nn.Linear(2, 2)))
        []
    """
    blocks: list[Block] = []
    for n in gm.graph.nodes:
        if not (n.op == "call_function" and "scaled_dot_product_attention" in str(n.target)):
            continue
        found = [_back_to_linear(gm, a) for a in n.args[:3]]
        if any(lin is None for lin, _ in found):
            continue
        (q, q_ops), (k, _), (v, _) = found
        o = _forward_to_linear(gm, n)
        if o is None:
            continue
        head_dim, inferred = _head_split(q_ops)
        qmod = gm.get_submodule(str(q.target))
        if head_dim is None or qmod.out_features % head_dim:
            continue
        shared = q.args[0] if (q.args[0] is k.args[0] is v.args[0]) else None
        blocks.append(Block(index=len(blocks), q=str(q.target), k=str(k.target), v=str(v.target), o=str(o.target),
                            head_dim=head_dim, heads=qmod.out_features // head_dim, heads_cuttable=inferred,
                            input_node=shared.name if isinstance(shared, fx.Node) else None))
    ffns = find_ffns(gm)
    # Each FFN belongs to the attention block before it in graph order.
    order = {n.target: i for i, n in enumerate(gm.graph.nodes) if n.op == "call_module"}
    for a, b in ffns:
        before = [blk for blk in blocks if order.get(blk.o, 1 << 60) < order.get(a, -1)]
        if before and before[-1].ffn_in is None:
            before[-1].ffn_in, before[-1].ffn_out = a, b
    return blocks


def find_ffns(gm: fx.GraphModule) -> list[tuple[str, str]]:
    """``(first, second)`` Linear names of every ``Linear → activation → Linear`` that maps back to its width.

    Example:
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
        >>> find_ffns(torch.fx.symbolic_trace(m))
        []
    """
    out = []
    for n in gm.graph.nodes:
        if not _linear(gm, n) or len(n.users) != 1:
            continue
        act = next(iter(n.users))
        if act.op not in ("call_function", "call_method") or _op_name(act) not in _ACTIVATIONS or len(act.users) != 1:
            continue
        nxt = next(iter(act.users))
        if not _linear(gm, nxt) or nxt.args[0] is not act:
            continue
        a, b = gm.get_submodule(str(n.target)), gm.get_submodule(str(nxt.target))
        if b.out_features == a.in_features and b.in_features == a.out_features:
            out.append((str(n.target), str(nxt.target)))
    return out


def block_output(gm: fx.GraphModule, block: Block) -> fx.Node | None:
    """The node holding ``block``'s output hidden state (every token), or None when it cannot be told.

    From the block's FFN output projection, through an (inactive) dropout, to the residual add. A post-LN layer
    (BERT) then normalises that sum, and its output is that ``layer_norm``; a pre-LN layer's output is the sum.
    For the last layer there is no next layer's input to read it from, and it is what pooling reads.

    Example:
        >>> node = block_output(graph_module, find_blocks(graph_module)[-1])  # doctest: +SKIP
        >>> node.name  # doctest: +SKIP
        'layer_norm_12'
    """
    if not block.ffn_out:
        return None
    node = next((n for n in gm.graph.nodes if n.op == "call_module" and str(n.target) == block.ffn_out), None)
    while node is not None and len(node.users) == 1 and _op_name(next(iter(node.users))) in _PASS_THROUGH:
        node = next(iter(node.users))
    if node is None or len(node.users) != 1:
        return None
    add = next(iter(node.users))
    if add.op not in ("call_function", "call_method") or _op_name(add) != "add":
        return None
    norm = next(iter(add.users)) if len(add.users) == 1 else None
    if norm is not None and norm.op == "call_function" and _op_name(norm) in ("layer_norm", "native_layer_norm"):
        return norm
    return add


def with_output_tap(gm: fx.GraphModule, node_name: str, tap: str) -> fx.GraphModule:
    """A copy of ``gm`` that passes node ``node_name`` through an ``nn.Identity`` submodule ``tap``, sharing
    every module and parameter with ``gm``: a forward pre-hook on ``tap`` sees that node's value, training the
    copy trains ``gm``, and ``gm``'s own graph is left as it was (it may be the user's model).

    Example:
        >>> tapped = with_output_tap(gm, "layer_norm_12", "modelpress_final_tap")  # doctest: +SKIP
        >>> tapped(*batch).equal(gm(*batch))  # doctest: +SKIP
        True
    """
    out = copy.deepcopy(gm)
    sync_structure(out, gm)  # before the tap exists: every module out calls is then gm's
    node = next(n for n in out.graph.nodes if n.name == node_name)
    out.add_submodule(tap, nn.Identity())
    with out.graph.inserting_after(node):
        tapped = out.graph.call_module(tap, (node,))
    node.replace_all_uses_with(tapped, delete_user_cb=lambda user: user is not tapped)
    out.recompile()
    return out


_SDPA_TARGETS = (torch.ops.aten.scaled_dot_product_attention.default, torch.nn.functional.scaled_dot_product_attention)


def scaled_dot_product_attention_float32(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                         attn_mask: torch.Tensor | None = None, *args: Any,
                                         **kwargs: Any) -> torch.Tensor:
    """``scaled_dot_product_attention`` in float32, whatever autocast is on around it (see ``with_float32_attention``).

    Example:
        >>> q = torch.ones(1, 1, 2, 4, dtype=torch.bfloat16)
        >>> scaled_dot_product_attention_float32(q, q, q).dtype
        torch.float32
    """
    if attn_mask is not None and attn_mask.is_floating_point():
        attn_mask = attn_mask.float()
    with torch.autocast("cpu", enabled=False):
        return torch.ops.aten.scaled_dot_product_attention.default(query.float(), key.float(), value.float(),
                                                                   attn_mask, *args, **kwargs)


def with_float32_attention(gm: fx.GraphModule) -> tuple[fx.GraphModule, int]:
    """A copy of ``gm`` whose attention runs in float32 under bf16 autocast, sharing every module and parameter
    with ``gm`` (training the copy trains ``gm``; ``gm``'s graph is left as it was); and how many calls changed.

    Why: CPU autocast runs attention in bf16, and its backward is then far slower than in float32 while the
    matrix products around it gain. Measured on a Xeon with AMX (torch 2.13, all-MiniLM-L6-v2 cut to 5 layers,
    batch 16 of 106 tokens, 2 threads): forward and backward 305 ms in float32, 265 ms under bf16 autocast (the
    attention backward 28 ms a call, against 5 ms in float32), 157 ms with attention kept in float32.

    Example:
        >>> copy_, n = with_float32_attention(graph_module)  # doctest: +SKIP
        >>> n  # one per layer  # doctest: +SKIP
        6
    """
    out = copy.deepcopy(gm)
    sync_structure(out, gm)
    n = 0
    for node in out.graph.nodes:
        if node.op == "call_function" and node.target in _SDPA_TARGETS:
            node.target = scaled_dot_product_attention_float32
            n += 1
    out.recompile()
    return out, n


# ----------------------------------------------------------------------------- surgery
def _set_module(gm: nn.Module, name: str, mod: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, leaf, mod)


def _sliced(lin: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    w = lin.weight.detach()
    if rows is not None:
        w = w.index_select(0, rows)
    if cols is not None:
        w = w.index_select(1, cols)
    new = nn.Linear(w.shape[1], w.shape[0], bias=lin.bias is not None)
    with torch.no_grad():
        new.weight.copy_(w)
        if lin.bias is not None:
            b = lin.bias.detach()
            new.bias.copy_(b.index_select(0, rows) if rows is not None else b)
    return new


def cut_ffn(gm: fx.GraphModule, first: str, second: str, keep: list[int]) -> None:
    """Keep FFN neurons ``keep`` (rows of ``first``, columns of ``second``)."""
    idx = torch.tensor(sorted(keep), dtype=torch.long)
    _set_module(gm, first, _sliced(gm.get_submodule(first), rows=idx))
    _set_module(gm, second, _sliced(gm.get_submodule(second), cols=idx))


def cut_heads(gm: fx.GraphModule, block: Block, keep: list[int]) -> None:
    """Keep heads ``keep`` of ``block`` (their ``head_dim`` rows of q/k/v and columns of the output)."""
    if not block.heads_cuttable:
        raise ValueError(f"{block.q}: the graph fixes the number of heads in its view; heads cannot be cut")
    d = block.head_dim
    idx = torch.cat([torch.arange(h * d, (h + 1) * d) for h in sorted(keep)])
    for name in (block.q, block.k, block.v):
        _set_module(gm, name, _sliced(gm.get_submodule(name), rows=idx))
    _set_module(gm, block.o, _sliced(gm.get_submodule(block.o), cols=idx))


def _impure(n: fx.Node) -> bool:
    # An exported graph keeps its (inactive) dropouts, shape asserts and attention (seeded: it could drop out),
    # which FX counts as side effects: left in, they would keep a dropped layer's attention computing for nothing.
    if n.op == "call_function" and _op_name(n) in ("dropout", "_assert_tensor_metadata", "native_dropout",
                                                   "scaled_dot_product_attention"):
        return False
    return n.is_impure()


def _sizes_from_inputs(gm: fx.GraphModule) -> None:
    """Take every batch or sequence size the graph reads off a hidden state from the first input instead.

    ``torch.export`` reads a symbolic size once, off the first tensor that has it (often layer 0's query), and
    every later view uses that read: it would keep a dropped layer computing. The first input has the same size
    (the same symbol in the node's metadata), so the read moves there.
    """
    first = next((n for n in gm.graph.nodes if n.op == "placeholder"), None)
    val = first.meta.get("val") if first is not None else None
    if val is None or not hasattr(val, "shape"):
        return
    for n in gm.graph.nodes:
        if n.op == "call_function" and "sym_size" in str(n.target) and len(n.args) == 2 and n.args[0] is not first:
            src, dim = n.args
            sv = getattr(src, "meta", {}).get("val")
            if (isinstance(dim, int) and sv is not None and 0 <= dim < min(len(sv.shape), len(val.shape))
                    and str(sv.shape[dim]) == str(val.shape[dim])):
                n.args = (first, dim)


def drop_layers(gm: fx.GraphModule, indices: Iterable[int]) -> None:
    """Remove layers ``indices`` (never the last): each one's output is replaced by its input.

    Example:
        >>> drop_layers(gm, [1, 3])  # doctest: +SKIP
    """
    blocks = find_blocks(gm)
    nodes = {n.name: n for n in gm.graph.nodes}
    drop = sorted(set(indices), reverse=True)
    for i in drop:
        if i >= len(blocks) - 1 or i < 0:
            raise ValueError(f"layer {i} cannot be dropped: the graph has {len(blocks)} layers and the last one stays")
        start, end = blocks[i].input_node, blocks[i + 1].input_node
        if start is None or end is None:
            raise ValueError(f"layer {i}: its query, key and value do not share one input, so where it begins "
                             "and ends cannot be told")
        nodes[end].replace_all_uses_with(nodes[start])
    _sizes_from_inputs(gm)
    gm.graph.eliminate_dead_code(is_impure_node=_impure)
    gm.delete_all_unused_submodules()
    gm.recompile()


def sync_structure(target: fx.GraphModule, source: fx.GraphModule) -> None:
    """Give ``target`` (the same model traced another way) ``source``'s layers and module objects.

    Layers whose query module ``source`` no longer has are dropped from ``target``; every module ``target``
    calls is then replaced by ``source``'s module of that name, so both share parameters: training one trains
    the other.
    """
    kept = {b.q for b in find_blocks(source)}
    gone = [b.index for b in find_blocks(target) if b.q not in kept]
    if gone:
        drop_layers(target, gone)
    for n in target.graph.nodes:
        if n.op == "call_module":
            _set_module(target, str(n.target), source.get_submodule(str(n.target)))
    # Parameters the graph reads directly (LayerNorm, embeddings: ``get_attr``) are shared one by one.
    for name, _ in list(target.named_parameters()) + list(target.named_buffers()):
        owner, _, leaf = name.rpartition(".")
        try:
            value = source.get_parameter(name)
        except AttributeError:
            try:
                value = source.get_buffer(name)
            except AttributeError:
                continue
        mod = target.get_submodule(owner) if owner else target
        if isinstance(value, nn.Parameter):
            setattr(mod, leaf, value)
        else:
            mod.register_buffer(leaf, value)


__all__ = ["Block", "block_output", "cut_ffn", "cut_heads", "drop_layers", "find_blocks", "find_ffns",
           "scaled_dot_product_attention_float32", "sync_structure", "with_float32_attention", "with_output_tap"]
