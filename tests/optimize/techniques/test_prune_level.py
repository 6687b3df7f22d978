"""``prune`` at a level of the float model: what it cuts of an input that an earlier level already cut."""

from __future__ import annotations

import pytest

from modelpress.errors import UserInputError
from modelpress.optimize.recipes import PruneConfig, Recipe
from modelpress.optimize.techniques.prune_level import delegate_for


def test_a_width_level_cuts_ffn_at_its_level_and_heads_at_half_of_the_float_model() -> None:
    d = delegate_for(PruneConfig(level=0.4), layers=6)
    assert (d.ffn, d.heads, d.layers) == (0.4, 0.2, 0)


def test_from_an_earlier_level_only_the_rest_is_cut_so_the_level_stays_a_fraction_of_the_float_model() -> None:
    d = delegate_for(PruneConfig(level=0.6, from_level=0.2), layers=6)
    # 1536 FFN neurons: 0.2 leaves 1229; cutting half of those leaves 614, i.e. 0.4 of the float's (0.6 cut).
    assert d.ffn == pytest.approx(0.5) and (1 - 0.2) * (1 - d.ffn) == pytest.approx(1 - 0.6)
    assert (1 - 0.1) * (1 - d.heads) == pytest.approx(1 - 0.3)  # heads: half the level, of the float's too


def test_a_depth_level_counts_the_layers_the_float_model_had() -> None:
    # 6 layers: level 0.4 drops round(0.4 × 5) = 2 in all; a 0.2 student (5 layers left) drops 1 more.
    assert delegate_for(PruneConfig(level=0.4, shape="depth"), layers=6).layers == 2
    assert delegate_for(PruneConfig(level=0.4, shape="depth", from_level=0.2), layers=5, float_layers=6).layers == 1
    with pytest.raises(UserInputError, match="drops no more layers of 6"):
        delegate_for(PruneConfig(level=0.25, shape="depth", from_level=0.2), layers=5, float_layers=6)


def test_a_mixed_level_drops_whole_layers_first_then_cuts_the_ffns_for_the_rest_of_the_time() -> None:
    # 6 layers of 1,536 neurons, 0.22 of the time: 4.68 layers' time left, so 5 layers, whose FFNs are cut so
    # that each takes 0.936 of a float layer's time (FFN 0.31 of it): 1,219 neurons, 1,216 as a multiple of 64.
    d = delegate_for(PruneConfig(level=0.22, shape="mixed"), layers=6, ffn=(1536, 1536))
    assert (d.layers, round(1536 * (1 - d.ffn)), d.multiple_of) == (1, 1216, 64)
    # From that student to 0.4: one layer more and 1,024 neurons, never growing back what is gone.
    d = delegate_for(PruneConfig(level=0.4, shape="mixed", from_level=0.22), layers=5, float_layers=6, ffn=(1536, 1216))
    assert (d.layers, round(1216 * (1 - d.ffn))) == (1, 1024)
    # A small level on 6 layers keeps them all and cuts neurons only.
    d = delegate_for(PruneConfig(level=0.1, shape="mixed"), layers=6, ffn=(1536, 1536))
    assert d.layers == 0 and 0 < d.ffn < 0.4
    # FFNs that cannot be cut: whole layers only.
    assert delegate_for(PruneConfig(level=0.34, shape="mixed"), layers=6, ffn=None).to_dict()["layers"] == 2
    with pytest.raises(UserInputError, match="cuts nothing more"):
        delegate_for(PruneConfig(level=0.2, shape="mixed", from_level=0.1), layers=5, float_layers=6, ffn=None)


def test_a_mixed_level_on_a_cnn_cuts_its_channels() -> None:
    assert delegate_for(PruneConfig(level=0.4, shape="mixed"), layers=0).amount == pytest.approx(0.4)


def test_a_cnn_level_cuts_the_rest_of_its_channels() -> None:
    assert delegate_for(PruneConfig(level=0.75, from_level=0.5), layers=0).amount == pytest.approx(0.5)


def test_a_prune_step_that_would_cut_less_than_its_input_already_has_is_refused_in_the_recipe() -> None:
    with pytest.raises(ValueError, match="from_level 0.5 must be below level 0.4"):
        Recipe.from_dict({"name": "x", "steps": [{"type": "prune", "level": 0.4, "from_level": 0.5}]})


def test_a_width_level_is_spent_on_the_split_of_heads_and_neurons_that_stays_closest_on_validation_rows(tmp_path):
    from modelpress.optimize.recipes import PruneConfig
    from modelpress.optimize.techniques.registry import StepContext, apply_step
    from modelpress.optimize.techniques.transformer_graph import find_blocks
    from tests.optimize.techniques.tiny_encoders import load_encoder

    spec, model, data = load_encoder(tmp_path)
    ctx = StepContext(spec=spec, data=data, engine="x86", reference=model)
    out = apply_step(model, PruneConfig(level=0.5), ctx)
    splits = out.meta["width_splits"]
    assert len(splits) >= 2 and all(s["rows"] > 0 for s in splits)
    best = max(splits, key=lambda s: s["cosine"])
    b = find_blocks(out.model)[0]
    # The kept model is the best-scoring split: its head count, and its FFN width up to the multiple of 16.
    assert b.heads == best["heads_kept"]
    assert abs(out.model.get_submodule(b.ffn_in).out_features - best["ffn_kept"]) <= 8
    # Every split removes about the same compute: fewer heads cut, more neurons cut.
    assert [s["heads_kept"] for s in splits] == sorted(s["heads_kept"] for s in splits)
    assert [s["ffn_kept"] for s in splits] == sorted((s["ffn_kept"] for s in splits), reverse=True)


def test_a_mixed_level_on_a_real_graph_drops_a_layer_and_cuts_every_kept_ffn_alike(tmp_path):
    from modelpress.optimize.techniques.registry import StepContext, apply_step
    from modelpress.optimize.techniques.transformer_graph import find_blocks
    from tests.optimize.techniques.tiny_encoders import load_encoder

    spec, model, data = load_encoder(tmp_path)
    before = find_blocks(model)
    width = model.get_submodule(before[0].ffn_in).out_features
    ctx = StepContext(spec=spec, data=data, engine="x86", reference=model)
    out = apply_step(model, PruneConfig(level=0.4, shape="mixed"), ctx)
    after = find_blocks(out.model)
    assert len(after) < len(before)
    widths = {out.model.get_submodule(b.ffn_in).out_features for b in after}
    assert len(widths) == 1 and widths.pop() <= width
    assert out.meta["delegate"]["type"] == "prune_transformer" and out.meta["delegate_meta"]["dropped_layers"]
