"""``prune_transformer`` and the graph surgery under it, on a BERT encoder given as an ``hf:`` folder."""

from __future__ import annotations

import copy

import pytest
import torch

from modelpress.errors import UserInputError
from modelpress.optimize.recipes import TransformerPruneConfig
from modelpress.optimize.techniques.registry import StepContext, apply_step, rebuild_step
from modelpress.optimize.techniques.transformer_graph import (block_output, cut_ffn, cut_heads, drop_layers, find_blocks,
                                                               sync_structure, with_float32_attention,
                                                               with_output_tap)
from tests.optimize.techniques.tiny_encoders import FFN, HEADS, HIDDEN, LAYERS, load_encoder


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return load_encoder(tmp_path_factory.mktemp("enc"))


def _ctx(spec, data, model) -> StepContext:  # type: ignore[no-untyped-def]
    return StepContext(spec=spec, data=data, engine="x86", reference=model)


def _out(model, data) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return model(*data.eval_inputs)


def test_every_layer_of_the_graph_is_found_with_its_heads_and_its_ffn(encoder) -> None:
    _, model, _ = encoder
    blocks = find_blocks(model)
    assert len(blocks) == LAYERS
    assert all(b.heads == HEADS and b.head_dim == HIDDEN // HEADS and b.heads_cuttable for b in blocks)
    assert [b.ffn_in for b in blocks] == [f"model.encoder.layer.{i}.intermediate.dense" for i in range(LAYERS)]
    assert all(b.input_node is not None for b in blocks)


def test_cutting_heads_neurons_and_a_layer_shrinks_the_graph_and_keeps_its_output_shape(encoder) -> None:
    _, model, data = encoder
    m = copy.deepcopy(model)
    before = sum(p.numel() for p in m.parameters())
    b = find_blocks(m)
    cut_heads(m, b[0], [0, 2])
    cut_ffn(m, b[1].ffn_in, b[1].ffn_out, list(range(0, FFN, 2)))
    drop_layers(m, [1])
    m.recompile()
    d = HIDDEN // HEADS
    # Heads: q, k, v lose 2*d rows (weights and biases) and the output projection 2*d columns.
    layer = 4 * HIDDEN * HIDDEN + 4 * HIDDEN + 2 * HIDDEN * FFN + FFN + HIDDEN + 4 * HIDDEN
    assert sum(p.numel() for p in m.parameters()) == before - 3 * (2 * d * HIDDEN + 2 * d) - 2 * d * HIDDEN - layer
    assert [x.q for x in find_blocks(m)] == [f"model.encoder.layer.{i}.attention.self.query" for i in (0, 2)]
    assert _out(m, data).shape == _out(model, data).shape


def test_the_last_layer_is_never_dropped(encoder) -> None:
    _, model, _ = encoder
    with pytest.raises(ValueError, match="the last one stays"):
        drop_layers(copy.deepcopy(model), [LAYERS - 1])


def test_a_dropped_layer_no_longer_computes_anything(encoder) -> None:
    _, model, _ = encoder
    m = copy.deepcopy(model)
    drop_layers(m, [0])
    # Not one module of layer 0 is left, not even the query whose size export reads the batch size off.
    assert not [n for n, _ in m.named_modules() if ".layer.0." in n]


def test_the_training_view_shares_the_cut_models_parameters_and_gives_its_outputs_on_trimmed_rows(encoder) -> None:
    spec, model, data = encoder
    m = copy.deepcopy(model)
    b = find_blocks(m)
    cut_heads(m, b[2], [1, 3])
    drop_layers(m, [0])
    view, trim = spec.training_view()
    sync_structure(view, m)
    assert {id(p) for p in view.parameters()} <= {id(p) for p in m.parameters()}
    x = data.eval_inputs
    assert trim(x)[0].shape[1] < x[0].shape[1]  # the rows are padded to 16; the longest is shorter
    with torch.no_grad():
        torch.testing.assert_close(view(*trim(x)), m(*x), atol=1e-5, rtol=1e-5)


def test_the_last_layers_output_is_what_pooling_reads_and_a_tap_on_it_leaves_the_model_as_it_was(encoder) -> None:
    _, model, data = encoder
    before = [n.format_node() for n in model.graph.nodes]
    node = block_output(model, find_blocks(model)[-1])
    assert node is not None and "layer_norm" in str(node.target)  # BERT is post-LN: the layer's sum is normalised
    tapped = with_output_tap(model, node.name, "tap")
    seen: dict[str, torch.Tensor] = {}
    tapped.get_submodule("tap").register_forward_pre_hook(lambda m, a: seen.__setitem__("h", a[0]))
    x = data.eval_inputs
    with torch.no_grad():
        out, ref = tapped(*x), model(*x)
    torch.testing.assert_close(out, ref)
    h, mask = seen["h"], x[1].unsqueeze(-1).float()  # (input_ids, attention_mask, ...)
    assert h.shape == (x[0].shape[0], x[0].shape[1], HIDDEN) and set(x[1].unique().tolist()) == {0, 1}
    pooled = (h * mask).sum(1) / mask.sum(1)  # mean over each row's own tokens: what the encoder returns
    torch.testing.assert_close(torch.nn.functional.normalize(pooled, dim=-1),
                               torch.nn.functional.normalize(ref, dim=-1), atol=1e-5, rtol=1e-5)
    assert [n.format_node() for n in model.graph.nodes] == before and not hasattr(model, "tap")
    assert {id(p) for p in tapped.parameters()} == {id(p) for p in model.parameters()}  # training one trains both


def test_under_bf16_autocast_the_float32_attention_copy_runs_attention_in_float32_sharing_the_weights(encoder) -> None:
    _, model, data = encoder
    before = [n.format_node() for n in model.graph.nodes]
    fp32, n = with_float32_attention(model)
    assert n == LAYERS
    seen: list[torch.dtype] = []

    def attention_dtypes(gm):  # type: ignore[no-untyped-def]
        # What each layer's output projection receives is what its attention returned.
        seen.clear()
        hooks = [gm.get_submodule(b.o).register_forward_pre_hook(lambda m, a: seen.append(a[0].dtype))
                 for b in find_blocks(model)]
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = gm(*data.eval_inputs)
        for h in hooks:
            h.remove()
        return out, list(seen)

    out_bf16, dt_bf16 = attention_dtypes(model)
    out_fp32, dt_fp32 = attention_dtypes(fp32)
    assert dt_bf16 == [torch.bfloat16] * LAYERS  # autocast alone runs attention in bf16 ...
    assert dt_fp32 == [torch.float32] * LAYERS   # ... the copy in float32 (the projections stay bf16)
    torch.testing.assert_close(out_fp32.float(), out_bf16.float(), atol=0.05, rtol=0.05)
    with torch.no_grad():  # without autocast the copy is the model
        torch.testing.assert_close(fp32(*data.eval_inputs), model(*data.eval_inputs))
    assert {id(p) for p in fp32.parameters()} == {id(p) for p in model.parameters()}
    assert [n.format_node() for n in model.graph.nodes] == before

def test_heads_and_neurons_that_contribute_nothing_are_the_ones_cut(encoder) -> None:
    spec, model, data = encoder
    m = copy.deepcopy(model)
    blocks = find_blocks(m)
    d = HIDDEN // HEADS
    with torch.no_grad():
        for b in blocks:
            m.get_submodule(b.o).weight[:, 1 * d:2 * d] = 0  # head 1 writes nothing
            m.get_submodule(b.ffn_out).weight[:, :16] = 0    # neurons 0..15 write nothing
    out = apply_step(m, TransformerPruneConfig(heads=0.25, ffn=0.25), _ctx(spec, data, model))
    assert all(1 not in keep and len(keep) == HEADS - 1 for keep in out.meta["heads"].values())
    assert all(not set(range(16)) & set(keep) and len(keep) == 48 for keep in out.meta["ffn"].values())
    assert out.meta["importance_from"] == "train"


def test_the_layer_dropped_is_the_one_whose_removal_changes_the_outputs_least(encoder) -> None:
    spec, model, data = encoder
    m = copy.deepcopy(model)
    b = find_blocks(m)[1]
    with torch.no_grad():  # layer 1 adds nothing to its input: its LayerNorm (weight 1, bias 0) sees a normed input
        for name in (b.o, b.ffn_out):
            m.get_submodule(name).weight.zero_()
            m.get_submodule(name).bias.zero_()
    out = apply_step(m, TransformerPruneConfig(layers=1), _ctx(spec, data, m))
    assert out.meta["dropped_layers"] == [1]
    torch.testing.assert_close(_out(out.model, data), _out(m, data), atol=1e-4, rtol=1e-4)


def test_a_cut_model_is_rebuilt_from_its_meta_to_the_same_outputs(encoder) -> None:
    spec, model, data = encoder
    cfg = TransformerPruneConfig(layers=1, heads=0.5, ffn=0.5)
    out = apply_step(model, cfg, _ctx(spec, data, model))
    rebuilt = rebuild_step(spec.build(), cfg, out.meta, engine="x86")
    rebuilt.load_state_dict(out.model.state_dict())
    assert out.meta["layers_after"] == LAYERS - 1 and out.meta["heads_per_layer_after"] == HEADS // 2
    assert out.meta["params_after"] < out.meta["params_before"]
    torch.testing.assert_close(_out(rebuilt, data), _out(out.model, data))


def test_a_model_without_attention_layers_is_refused_with_the_step_to_use_instead() -> None:
    from modelpress.zoo.models import SeedMLP
    from modelpress.optimize.spec import ModelSpec, TaskData

    x = torch.randn(16, 512)
    spec = ModelSpec(name="mlp", version=1, build=SeedMLP, data=lambda: TaskData(x, None, x), metric="top1_agreement",
                     make_input=lambda b: x[:b])
    with pytest.raises(UserInputError, match="prune_structured"):
        apply_step(SeedMLP().eval(), TransformerPruneConfig(ffn=0.5), StepContext(spec=spec, data=spec.data(), engine="x86"))


def test_a_step_that_cuts_nothing_is_refused_in_the_recipe() -> None:
    from modelpress.errors import RecipeError
    from modelpress.optimize.recipes import parse_step

    with pytest.raises(RecipeError, match="cuts nothing"):
        parse_step({"type": "prune_transformer"})


def test_refitting_the_projection_after_a_cut_brings_the_outputs_closer_to_the_uncut_model(encoder) -> None:
    spec, model, data = encoder
    ctx = _ctx(spec, data, model)
    want = _out(model, data)  # eval rows: the refit saw train rows only
    errs = {}
    for refit in (False, True):
        out = apply_step(model, TransformerPruneConfig(heads=0.5, ffn=0.5, refit=refit), ctx)
        errs[refit] = float((_out(out.model, data) - want).pow(2).mean())
        assert out.meta.get("refit", []) == ([] if not refit else sorted(
            [b.o for b in find_blocks(model)] + [b.ffn_out for b in find_blocks(model)]))
    assert errs[True] < 0.5 * errs[False], errs


def test_least_squares_refit_recovers_a_layer_whose_cut_columns_were_copies_of_kept_ones() -> None:
    from modelpress.optimize.techniques.transformer_pruning import refit

    x = torch.randn(500, 4, dtype=torch.float64)
    x = torch.cat([x, x[:, :2]], dim=1)  # columns 4, 5 repeat columns 0, 1
    w = torch.randn(3, 6, dtype=torch.float64)
    w2 = refit(w, x.T @ x, [0, 1, 2, 3], ridge=0.0)
    torch.testing.assert_close(x[:, :4] @ w2.T, x @ w.T)
