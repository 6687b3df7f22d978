"""``distill_float``: a cut transformer trained back towards the float model, bounded, visible and resumable."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from modelpress.errors import UserInputError
from modelpress.optimize.measure import compute_metric, predict, torch_threads
from modelpress.optimize.recipes import DistillFloatConfig, TransformerPruneConfig
from modelpress.optimize.hostcpu import cpu_flags
from modelpress.optimize.techniques.distill_float import BF16_CPU_FLAGS, FINAL_TAP, resolve_precision
from modelpress.optimize.techniques.registry import StepContext, apply_step
from tests.optimize.techniques.tiny_encoders import LAYERS, load_encoder


@pytest.fixture(scope="module")
def cut(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """(spec, float graph, data, the graph with half its heads and FFN neurons cut, not refitted).

    Without the least-squares refit the cut leaves a gap for distillation to close; with it, this tiny encoder
    starts at cosine 0.999998 and there is nothing left to learn.
    """
    spec, model, data = load_encoder(tmp_path_factory.mktemp("enc"))
    ctx = StepContext(spec=spec, data=data, engine="x86", reference=model)
    return spec, model, data, apply_step(model, TransformerPruneConfig(heads=0.5, ffn=0.5, refit=False), ctx).model


def _eval_cosine(student, teacher, data) -> float:  # type: ignore[no-untyped-def]
    return compute_metric("cosine", predict(student, data.eval_inputs), labels=None,
                          reference=predict(teacher, data.eval_inputs))


def _distil_60_steps(cut, progress=None, **cfg):  # type: ignore[no-untyped-def]
    """(step output, eval cosine of the cut student, of the distilled one): 60 steps at lr 1e-3, one thread."""
    spec, model, data, student = cut
    ctx = StepContext(spec=spec, data=data, engine="x86", reference=model, progress=progress or (lambda p: None))
    with torch_threads(1):
        out = apply_step(student, DistillFloatConfig(max_steps=60, validate_every=20, lr=1e-3, **cfg), ctx)
    return out, _eval_cosine(student, model, data), _eval_cosine(out.model, model, data)


def test_distilling_a_cut_encoder_brings_it_back_towards_the_float_model_on_rows_it_never_saw(cut) -> None:
    _, model, data, student = cut
    seen: list[dict] = []
    out, before, after = _distil_60_steps(cut, progress=seen.append)
    # A random encoder's embeddings are close to each other whatever is cut, so the gap is small: it must halve.
    assert 1 - after < 0.5 * (1 - before), (before, after)
    assert out.meta["validation_best"] >= out.meta["validation_before"]
    assert out.meta["steps_run"] == 60 and out.meta["stopped_by"] == "max_steps"
    assert out.meta["loss"] == "cosine" and out.meta["matched_layers"][:-1]  # hidden states of layers 1 and 2
    assert out.meta["matched_layers"][-1] == FINAL_TAP  # and the last layer's output, through a tap ...
    assert FINAL_TAP not in dict(out.model.named_modules())  # ... that the model it returns does not have
    assert "dynamic sequence length" in out.meta["trained_through"]
    assert [p["iteration"] for p in seen] == [20, 40, 60]
    assert all(p["step"] == "distill_float" and p["of"] == 60 and p["metric"] == "cosine" for p in seen)
    assert out.model is not student and _eval_cosine(student, model, data) == before  # the input is untouched


def test_in_bfloat16_the_student_still_closes_the_gap_and_keeps_float32_weights_judged_in_float32(cut) -> None:
    _, model, data, _ = cut
    out, before, after = _distil_60_steps(cut, precision="bfloat16")
    assert 1 - after < 0.5 * (1 - before), (before, after)
    assert out.meta["precision"] == "bfloat16" and out.meta["attention_float32"] == LAYERS  # every layer's attention
    assert all(p.dtype == torch.float32 for p in out.model.parameters())
    # The best step was chosen on validation in float32: the returned weights score that figure without autocast.
    val = compute_metric("cosine", predict(out.model, data.val_inputs), labels=None,
                         reference=predict(model, data.val_inputs))
    assert out.meta["validation_best"] == pytest.approx(val, abs=1e-5)


def test_auto_precision_is_bf16_only_on_a_cpu_with_native_bf16_arithmetic() -> None:
    assert resolve_precision("auto", frozenset({"avx2", "avx512f", "amx_bf16"})) == "bfloat16"
    assert resolve_precision("auto", frozenset({"avx2", "avx512f", "avx512_bf16"})) == "bfloat16"
    assert resolve_precision("auto", frozenset({"avx2", "avx512f", "avx512_vnni"})) == "float32"
    assert resolve_precision("auto", frozenset()) == "float32"  # /proc/cpuinfo unreadable: nothing assumed
    assert resolve_precision("float32", frozenset({"amx_bf16"})) == "float32"  # asked for, not overridden


def test_an_auto_precision_run_records_what_this_host_trained_in(cut) -> None:
    out, before, after = _distil_60_steps(cut, precision="auto")
    native = bool(BF16_CPU_FLAGS & cpu_flags())
    assert out.meta["precision"] == ("bfloat16" if native else "float32")
    assert out.meta["attention_float32"] == (LAYERS if native else 0)
    assert 1 - after < 0.5 * (1 - before), (before, after)

def test_with_embeddings_frozen_the_students_tables_stay_the_teachers_and_its_layers_still_learn(cut) -> None:
    spec, model, data, student = cut
    ctx = StepContext(spec=spec, data=data, engine="x86", reference=model)
    with torch_threads(1):
        out = apply_step(student, DistillFloatConfig(max_steps=30, validate_every=10, lr=1e-3, embeddings="freeze"),
                         ctx)
    before, after = dict(student.named_parameters()), dict(out.model.named_parameters())
    tables = {n for n, p in before.items() if "embeddings" in n and p.dim() == 2}
    assert tables and out.meta["frozen_params"] == sum(before[n].numel() for n in tables)
    assert all(torch.equal(before[n], after[n]) for n in tables)
    changed = [n for n in before if n not in tables and not torch.equal(before[n], after[n])]
    assert changed and out.meta["validation_best"] > out.meta["validation_before"]
    assert all(p.requires_grad for p in out.model.parameters())  # frozen while it trained, not for what follows


def test_distillation_stops_at_its_time_bound(cut) -> None:
    spec, model, data, student = cut
    ctx = StepContext(spec=spec, data=data, engine="x86", reference=model)
    out = apply_step(student, DistillFloatConfig(max_steps=100_000, max_seconds=3.0, validate_every=5), ctx)
    assert out.meta["stopped_by"] == "max_seconds" and out.meta["steps_run"] < 100_000
    assert out.meta["seconds"] < 3.0 + 10  # one step and one validation past the bound at most


class _Killed(Exception):
    """Stands for the worker dying between two checkpoints."""


def test_a_run_killed_mid_way_resumes_from_its_checkpoint_and_ends_where_an_unbroken_run_ends(cut, tmp_path) -> None:
    spec, model, data, student = cut
    cfg = DistillFloatConfig(max_steps=30, validate_every=10, lr=1e-3)

    def die_at_20(p: dict) -> None:
        if p["iteration"] == 20:
            raise _Killed

    with torch_threads(1):
        unbroken = apply_step(student, cfg, StepContext(spec=spec, data=data, engine="x86", reference=model)).model
        with pytest.raises(_Killed):
            apply_step(student, cfg, StepContext(spec=spec, data=data, engine="x86", reference=model,
                                                 checkpoint_dir=tmp_path, progress=die_at_20))
        assert len(list(tmp_path.glob("distill_float-*.pt"))) == 1
        resumed = apply_step(student, cfg, StepContext(spec=spec, data=data, engine="x86", reference=model,
                                                       checkpoint_dir=tmp_path))
    assert resumed.meta["resumed_from_step"] == 20
    assert [h["step"] for h in resumed.meta["history"]] == [10, 20, 30]
    for (k, a), b in zip(unbroken.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_a_checkpoint_of_another_student_is_not_resumed(cut, tmp_path) -> None:
    spec, model, data, student = cut
    cfg = DistillFloatConfig(max_steps=10, validate_every=5)
    ctx = StepContext(spec=spec, data=data, engine="x86", reference=model, checkpoint_dir=tmp_path)
    apply_step(student, cfg, ctx)
    other = copy.deepcopy(student)
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    assert apply_step(other, cfg, ctx).meta["resumed_from_step"] is None



def test_a_run_given_a_new_time_bound_resumes_its_checkpoint_under_that_bound(cut, tmp_path) -> None:
    # A search's polishing is bounded by the time the job has left, which a redelivered job computes again.
    spec, model, data, student = cut
    ctx = StepContext(spec=spec, data=data, engine="x86", reference=model, checkpoint_dir=tmp_path)
    with torch_threads(1):
        first = apply_step(student, DistillFloatConfig(max_steps=10, validate_every=5, max_seconds=600), ctx)
        again = apply_step(student, DistillFloatConfig(max_steps=15, validate_every=5, max_seconds=900), ctx)
    assert first.meta["steps_run"] == 10
    assert again.meta["resumed_from_step"] == 10 and again.meta["steps_run"] == 15
    assert [h["step"] for h in again.meta["history"]] == [5, 10, 15]


def test_an_extended_run_keeps_every_setting_and_the_steps_per_second_its_bounds_allow() -> None:
    cfg = DistillFloatConfig(max_steps=6000, max_seconds=420, lr=2e-4, precision="auto")
    more = cfg.extended(630)
    assert (more.max_seconds, more.max_steps) == (630.0, 9000)
    assert more.model_dump(exclude={"max_seconds", "max_steps"}) == cfg.model_dump(exclude={"max_seconds", "max_steps"})
    assert cfg.extended(0.01).max_steps == 1


def test_a_run_whose_target_is_out_of_reach_stops_at_half_its_bound_and_one_within_reach_does_not(cut) -> None:
    spec, model, data, student = cut
    cfg = DistillFloatConfig(max_steps=40, validate_every=5, lr=1e-3)
    with torch_threads(1):
        beyond = apply_step(student, cfg, StepContext(spec=spec, data=data, engine="x86", reference=model,
                                                      target=1.5))  # a cosine never reaches it
        within = apply_step(student, cfg, StepContext(spec=spec, data=data, engine="x86", reference=model,
                                                      target=0.0))
    assert beyond.meta["stopped_by"] == "out_of_reach" and beyond.meta["steps_run"] == 20  # the first check: half
    assert beyond.meta["target"] == 1.5
    assert within.meta["stopped_by"] == "max_steps" and within.meta["steps_run"] == 40


def test_the_projection_that_stops_a_run_is_generous_and_waits_for_half_the_run() -> None:
    from modelpress.optimize.techniques.distill_float import out_of_reach

    state = {"best": 0.9617, "best_at_quarter": 0.957}
    assert out_of_reach(state, 0.5, 0.98) == pytest.approx(0.9711)
    assert out_of_reach(state, 0.49, 0.98) is None  # not yet half done
    assert out_of_reach(state, 0.5, 0.97) is None  # 0.9711 would reach it
    assert out_of_reach(state, 0.9, None) is None  # no target: train to the bounds
    assert out_of_reach({"best": 0.96, "best_at_quarter": None}, 0.6, 0.98) is None

def test_without_train_rows_the_step_says_how_to_give_them(cut) -> None:
    spec, model, data, student = cut
    ctx = StepContext(spec=spec, data=dataclasses.replace(data, train_inputs=None), engine="x86", reference=model)
    with pytest.raises(UserInputError, match=r"data: \{train: FILE\}"):
        apply_step(student, DistillFloatConfig(max_steps=5), ctx)


def test_a_classifier_is_distilled_on_its_logits_with_its_train_labels(tmp_path) -> None:
    spec, model, data = load_encoder(tmp_path, classifier=True)
    ctx = StepContext(spec=spec, data=data, engine="x86", reference=model)
    student = apply_step(model, TransformerPruneConfig(ffn=0.5), ctx).model
    out = apply_step(student, DistillFloatConfig(max_steps=10, validate_every=5, label_weight=0.3), ctx)
    assert out.meta["loss"] == "kl" and out.meta["labels_used"] and out.meta["temperature"] == 2.0


def test_a_cnn_student_is_matched_only_where_its_layers_keep_the_teachers_shapes() -> None:
    from modelpress.optimize.techniques.distill_float import match_points
    from modelpress.zoo.models import DigitsCNN

    teacher, student = DigitsCNN().eval(), DigitsCNN(width=0.5).eval()
    x = (torch.randn(2, 1, 8, 8),)
    points = match_points(student, teacher, x)
    assert match_points(teacher, copy.deepcopy(teacher), x)  # same shapes everywhere: matched
    t_in, s_in = {}, {}
    for name in points:
        teacher.get_submodule(name).register_forward_pre_hook(lambda m, a, n=name: t_in.__setitem__(n, a[0].shape))
        student.get_submodule(name).register_forward_pre_hook(lambda m, a, n=name: s_in.__setitem__(n, a[0].shape))
    teacher(*x), student(*x)
    assert all(t_in[n] == s_in[n] for n in points)
