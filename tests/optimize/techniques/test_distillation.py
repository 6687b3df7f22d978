"""Fine-tuning and knowledge distillation on real models (briefly trained digits CNN, seed MLP)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modelpress
from modelpress.optimize.artifacts import save_artifact
from modelpress.optimize.techniques.distillation import (
    eval_metric,
    hinton_loss,
    register_student,
    student_factories,
)
from modelpress.errors import UserInputError
from modelpress.optimize.measure import count_params, predict
from modelpress.optimize.recipes import DistillConfig, FinetuneConfig, Recipe, StructuredPruneConfig
from modelpress.optimize.techniques.registry import StepContext, apply_step, handler_for
from modelpress.zoo.distill_compare import compare_distillation
from modelpress.zoo.models import DigitsCNN, SeedMLP

torch.set_num_threads(1)


def _ctx(spec, data, reference, seed=0):
    return StepContext(spec=spec, data=data, engine="fbgemm", reference=reference, seed=seed)


class HalfMLP(nn.Module):
    """A registered student for the seed MLP (its class has no width argument)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.fc1, self.relu, self.fc2 = nn.Linear(512, hidden), nn.ReLU(), nn.Linear(hidden, 100)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(x)))


if "test_half_mlp" not in student_factories():
    register_student("test_half_mlp")(lambda teacher, width: HalfMLP(int(1024 * width)))


# ------------------------------------------------------------------------------- the loss
def test_hinton_loss_is_the_weighted_sum_of_scaled_soft_kl_and_hard_cross_entropy():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    T, a = 3.0, 0.6
    p_t = torch.softmax(t / T, -1)
    kl = (p_t * (torch.log(p_t) - torch.log_softmax(s / T, -1))).sum(-1).mean()
    expected = a * T * T * kl + (1 - a) * nn.functional.cross_entropy(s, y)
    assert float(hinton_loss(s, t, y, temperature=T, alpha=a)) == pytest.approx(float(expected), rel=1e-5)
    assert float(hinton_loss(t, t, None, temperature=T, alpha=a)) == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------------------- finetune
def test_finetune_without_labels_fits_the_float_reference_and_recovers_agreement(mlp):
    spec, data, model = mlp
    ctx = _ctx(spec, data, model)
    pruned = apply_step(model, StructuredPruneConfig(amount=0.5), ctx).model
    tuned = apply_step(pruned, FinetuneConfig(epochs=3, lr=1e-3), ctx)
    assert tuned.meta["target"] == "reference"
    assert tuned.meta["metric_before_finetune"] == pytest.approx(eval_metric(pruned, ctx))
    assert tuned.meta["metric_after_finetune"] > tuned.meta["metric_before_finetune"] + 0.05


def test_finetune_refuses_label_training_for_a_model_without_labels(mlp):
    spec, data, model = mlp
    with pytest.raises(UserInputError, match="target='reference'"):
        apply_step(model, FinetuneConfig(target="labels"), _ctx(spec, data, model))


def test_finetune_after_int8_conversion_is_refused_with_the_fix(mlp):
    from modelpress.optimize.backends import get_backend

    spec, data, model = mlp
    q = get_backend().quantize_dynamic(model, engine="fbgemm", per_channel=True, module_types=["Linear"],
                                       keep_float=[])
    with pytest.raises(UserInputError, match="before"):
        apply_step(q, FinetuneConfig(), _ctx(spec, data, model))


# ------------------------------------------------------------------------------- distill
def test_distillation_trains_a_narrower_student_and_records_it_against_the_student_alone(digits):
    spec, data, teacher = digits
    out = apply_step(teacher, DistillConfig(width=0.25, epochs=3), _ctx(spec, data, teacher))
    student, meta = out.model, out.meta
    assert isinstance(student, DigitsCNN) and student.features[0].out_channels == 8
    assert meta["student_params"] == count_params(student) < meta["teacher_params"] / 4
    assert meta["student_flops"] < meta["teacher_flops"] / 8
    assert meta["student_distilled_metric"] == pytest.approx(eval_metric(student, _ctx(spec, data, teacher)))
    assert meta["teacher_metric"] == pytest.approx(eval_metric(teacher, _ctx(spec, data, teacher)))
    # It learned (chance is 10 %) and the baseline was really trained, not copied.
    assert meta["student_distilled_metric"] > 0.8 and meta["student_alone_metric"] > 0.8
    assert meta["distill_gain"] == pytest.approx(meta["student_distilled_metric"] - meta["student_alone_metric"])


def test_distillation_with_alpha_zero_is_exactly_training_the_student_alone(digits):
    # Same initial weights, same batches, same loss → the same model: the comparison is fair.
    spec, data, teacher = digits
    meta = apply_step(teacher, DistillConfig(width=0.125, epochs=2, alpha=0.0), _ctx(spec, data, teacher, seed=3)).meta
    assert meta["student_distilled_metric"] == meta["student_alone_metric"]


def test_a_distilled_artifact_reloads_as_the_student_with_identical_outputs(digits, tmp_path):
    spec, data, teacher = digits
    recipe = Recipe.from_dict({"name": "d", "steps": [{"type": "distill", "width": 0.25, "epochs": 1,
                                                       "compare_baseline": False}]})
    out = apply_step(teacher, recipe.steps[0], _ctx(spec, data, teacher))
    assert out.meta["student_alone_metric"] is None
    manifest = {"model": {"name": spec.name, "version": spec.version, "content_sha256": "test"}, "engine": "fbgemm",
                "recipe": recipe.to_dict(), "steps_meta": [out.meta]}
    save_artifact(tmp_path / "d.mpz", out.model, manifest)
    loaded = modelpress.load(str(tmp_path / "d.mpz"))
    assert loaded.features[0].out_channels == 8
    assert torch.equal(predict(loaded, data.eval_inputs), predict(out.model, data.eval_inputs))


def test_distilling_a_model_whose_class_has_no_width_says_how_to_register_a_student(mlp):
    spec, data, model = mlp
    with pytest.raises(UserInputError, match="register_student"):
        apply_step(model, DistillConfig(epochs=1), _ctx(spec, data, model))
    with pytest.raises(UserInputError, match="unknown student factory 'nope'"):
        apply_step(model, DistillConfig(student="nope", epochs=1), _ctx(spec, data, model))


def test_a_registered_student_distils_without_labels_and_is_rebuilt_from_the_meta(mlp):
    spec, data, model = mlp
    cfg = DistillConfig(student="test_half_mlp", width=0.25, epochs=2, lr=3e-3)
    ctx = _ctx(spec, data, model)
    out = apply_step(model, cfg, ctx)
    assert out.model.fc1.out_features == 256
    assert out.meta["alpha_used"] == 1.0 and out.meta["student_alone_metric"] is None
    assert "no training labels" in out.meta["baseline_note"]
    assert out.meta["student_distilled_metric"] > 0.2  # top-1 agreement with the teacher; chance is 1 %
    rebuilt = handler_for(cfg).rebuild(SeedMLP(), cfg, out.meta, engine="fbgemm")
    rebuilt.load_state_dict(out.model.state_dict(), strict=True)


def test_the_multi_seed_comparison_reports_every_seed_and_a_verdict(digits):
    spec, data, teacher = digits
    c = compare_distillation("digits_cnn", width=0.125, epochs=1, seeds=(0, 1), teacher=teacher)
    assert [r["seed"] for r in c.rows] == [0, 1]
    assert c.verdict in {"helps", "hurts", "no clear difference"}
    text = c.format()
    assert "| 0 |" in text and "| 1 |" in text and "Verdict over 2 seeds" in text


def test_the_seed_changes_the_student_so_seeds_are_independent_trials(digits):
    spec, data, teacher = digits
    cfg = DistillConfig(width=0.125, epochs=1, compare_baseline=False)
    a = apply_step(teacher, cfg, _ctx(spec, data, teacher, seed=0)).model
    b = apply_step(teacher, cfg, _ctx(spec, data, teacher, seed=1)).model
    again = apply_step(teacher, cfg, _ctx(spec, data, teacher, seed=0)).model
    assert not torch.equal(a.features[0].weight, b.features[0].weight)
    assert torch.equal(a.features[0].weight, again.features[0].weight)
