"""Training steps: fine-tuning (``finetune``) and Hinton knowledge distillation (``distill``).

``finetune`` trains the current model (typically just pruned) on the spec's training data. Models
without labels (the seed MLP is judged by agreement with its float self) are fitted to the float
reference model's outputs instead (MSE on outputs): the only honest target when no labels exist.

``distill`` trains a smaller *student* from the current model (the *teacher*) with Hinton's loss
``alpha * T² * KL(softmax(t/T) ‖ softmax(s/T)) + (1 - alpha) * CE(s, y)``, and — unless told not to —
trains the same student (same initial weights, batches, epochs) on the labels alone, recording both
metrics so the report shows whether distillation helped rather than assuming it did. The student is
built by a registered *student factory*; the default, ``"width"``, rebuilds the teacher's class with a
``width=`` multiplier (``DigitsCNN(width=0.5)``). Models name another factory in ``ModelSpec.extra
["student"]``, recipes in ``distill.student``; register new ones with ``register_student``.

Example:
    >>> sorted(student_factories())[:1]
    ['width']
"""

from __future__ import annotations

import copy
import inspect
import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from modelpress.errors import ModelLoadError, UserInputError
from modelpress.optimize.measure import as_tuple, compute_metric, count_flops, count_params, predict
from modelpress.optimize.recipes import DistillConfig, FinetuneConfig
from modelpress.optimize.techniques.registry import StepContext, StepOutput, register_handler
from modelpress.optimize.techniques.training import fit, outputs_of, require_trainable

StudentFactory = Callable[[nn.Module, float], nn.Module]
_STUDENTS: dict[str, StudentFactory] = {}


def register_student(name: str) -> Callable[[StudentFactory], StudentFactory]:
    """Register ``factory(teacher, width) -> student`` under ``name`` (used by ``distill.student``).

    The factory must be deterministic in its *architecture* (weights are loaded from the artifact):
    ``rebuild`` calls it again when an artifact is loaded.

    Example:
        >>> @register_student("mlp_half")  # doctest: +SKIP
        ... def mlp_half(teacher, width):
        ...     return MyMLP(hidden=int(1024 * width))
    """

    def deco(fn: StudentFactory) -> StudentFactory:
        if name in _STUDENTS and _STUDENTS[name] is not fn:
            raise ValueError(f"student factory {name!r} registered twice")
        _STUDENTS[name] = fn
        return fn

    return deco


def student_factories() -> dict[str, StudentFactory]:
    """The registered student factories, by name."""
    return dict(_STUDENTS)


@register_student("width")
def width_student(teacher: nn.Module, width: float) -> nn.Module:
    """The teacher's own class built with ``width=width`` (channel/neuron multiplier).

    Example:
        >>> from modelpress.zoo.models import DigitsCNN
        >>> width_student(DigitsCNN(), 0.5).features[0].out_channels
        16
    """
    cls = type(teacher)
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}
    if "width" not in params:
        raise UserInputError(
            f"distill: {cls.__name__} takes no `width` argument, so the default student (the teacher's class at "
            f"a smaller width) cannot be built; register a student factory with "
            f"modelpress.optimize.techniques.distillation.register_student and name it in the step's `student` "
            f"(registered: {', '.join(sorted(_STUDENTS))})")
    return cls(width=width)


def _student_name(cfg: DistillConfig, ctx: StepContext) -> str:
    name = cfg.student or ctx.spec.extra.get("student") or "width"
    if name not in _STUDENTS:
        raise UserInputError(f"distill.student: unknown student factory {name!r}; registered: "
                             f"{', '.join(sorted(_STUDENTS))}")
    return name


# ------------------------------------------------------------------------------- losses
def hinton_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None, *,
                temperature: float, alpha: float) -> torch.Tensor:
    """``alpha·T²·KL(teacher_T ‖ student_T) + (1−alpha)·CE(student, labels)`` (Hinton et al., 2015).

    The T² factor keeps the soft-target gradients on the same scale as the hard ones when T changes.
    Without labels only the soft term is used.

    Example:
        >>> t = torch.tensor([[2.0, 0.0]])
        >>> float(hinton_loss(t, t, None, temperature=4.0, alpha=1.0))
        0.0
    """
    log_s = nn.functional.log_softmax(student_logits / temperature, dim=-1)
    log_t = nn.functional.log_softmax(teacher_logits / temperature, dim=-1)
    soft = nn.functional.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * temperature**2
    if labels is None or alpha >= 1.0:
        return soft
    return alpha * soft + (1.0 - alpha) * nn.functional.cross_entropy(student_logits, labels)


def eval_metric(model: nn.Module, ctx: StepContext) -> float:
    """The spec's metric of ``model`` on the held-out eval data (fidelity metrics against ``ctx.reference``).

    Example:
        >>> eval_metric(model, ctx)  # doctest: +SKIP
        0.9861
    """
    ref = predict(ctx.reference, ctx.data.eval_inputs) if ctx.reference is not None else None
    return compute_metric(ctx.spec.metric, predict(model, ctx.data.eval_inputs), labels=ctx.data.eval_labels,
                          reference=ref)


def _train_inputs(ctx: StepContext, step: str) -> Any:
    if ctx.data.train_inputs is None:
        raise UserInputError(f"{step}: model {ctx.spec.name!r} has no training data (ModelSpec.data().train_inputs); "
                             "remove the step from the recipe or register training data for the model")
    return ctx.data.train_inputs


# ------------------------------------------------------------------------------- finetune
@register_handler(FinetuneConfig)
class FinetuneHandler:
    """Adam on the spec's training labels, or on the float reference's outputs when there are none."""

    def apply(self, model: nn.Module, cfg: FinetuneConfig, ctx: StepContext) -> StepOutput:
        require_trainable(model, "finetune")
        inputs = _train_inputs(ctx, "finetune")
        labels = ctx.data.train_labels
        target = cfg.target if cfg.target != "auto" else ("labels" if labels is not None else "reference")
        if target == "labels":
            if labels is None:
                raise UserInputError(f"finetune.target='labels' but model {ctx.spec.name!r} has no training labels; "
                                     "use target='reference' (match the float model's outputs)")
            loss_fn = lambda out, idx: nn.functional.cross_entropy(out, labels[idx])  # noqa: E731
        else:
            if ctx.reference is None:
                raise UserInputError("finetune.target='reference' needs the float reference model, which this "
                                     "run does not provide")
            ref_out = outputs_of(ctx.reference.eval(), inputs)
            loss_fn = lambda out, idx: nn.functional.mse_loss(out, ref_out[idx])  # noqa: E731
        metric_before = eval_metric(model, ctx)
        res = fit(model, inputs, loss_fn, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=ctx.seed,
                  log=ctx.log)
        metric_after = eval_metric(res.model, ctx)
        ctx.log(f"finetune ({target}): {ctx.spec.metric} {metric_before:.4f} → {metric_after:.4f}")
        return StepOutput(res.model, {"target": target, "epochs": cfg.epochs, "epoch_losses": res.epoch_losses,
                                      "metric_name": ctx.spec.metric, "metric_before_finetune": metric_before,
                                      "metric_after_finetune": metric_after})

    def rebuild(self, model: nn.Module, cfg: FinetuneConfig, meta: dict[str, Any], *, engine: str) -> nn.Module:
        return model  # training changes values, not structure


# ------------------------------------------------------------------------------- distill
@register_handler(DistillConfig)
class DistillHandler:
    """Hinton distillation into a narrower student, with the student-alone baseline for comparison."""

    def apply(self, model: nn.Module, cfg: DistillConfig, ctx: StepContext) -> StepOutput:
        if ctx.spec.metric == "cosine":
            raise UserInputError(f"distill works on classifier logits (softmax at temperature T); model "
                                 f"{ctx.spec.name!r} outputs embeddings judged by cosine")
        teacher = model.eval()
        inputs = _train_inputs(ctx, "distill")
        labels = ctx.data.train_labels
        name = _student_name(cfg, ctx)
        torch.manual_seed(ctx.seed)  # the student's initial weights: same seed, same start for both runs
        student = _STUDENTS[name](teacher, cfg.width)
        require_trainable(student, "distill")
        alone = copy.deepcopy(student) if (cfg.compare_baseline and labels is not None) else None

        teacher_logits = outputs_of(teacher, inputs)
        probe = ctx.spec.make_input(1)
        with torch.no_grad():
            out_shape = student.eval()(*as_tuple(probe)).shape
        if out_shape[-1] != teacher_logits.shape[-1]:
            raise UserInputError(f"distill: the student outputs {out_shape[-1]} values, the teacher "
                                 f"{teacher_logits.shape[-1]}; the student factory {name!r} must keep the output size")
        alpha = cfg.alpha if labels is not None else 1.0  # no labels: soft targets only
        distilled = fit(
            student, inputs,
            lambda out, idx: hinton_loss(out, teacher_logits[idx], None if labels is None else labels[idx],
                                         temperature=cfg.temperature, alpha=alpha),
            epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=ctx.seed, log=ctx.log).model
        meta: dict[str, Any] = {
            "student_factory": name,
            "student_class": f"{type(student).__module__}.{type(student).__qualname__}",
            "width": cfg.width,
            "seed": ctx.seed,
            "alpha_used": alpha,
            "teacher_params": count_params(teacher),
            "student_params": count_params(distilled),
            "teacher_flops": count_flops(teacher, probe),
            "student_flops": count_flops(distilled, probe),
            "metric_name": ctx.spec.metric,
            "teacher_metric": eval_metric(teacher, ctx),
            "student_distilled_metric": eval_metric(distilled, ctx),
            "student_alone_metric": None,
            "distill_gain": None,
        }
        if alone is not None:
            fit(alone, inputs, lambda out, idx: nn.functional.cross_entropy(out, labels[idx]),
                epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=ctx.seed)
            meta["student_alone_metric"] = eval_metric(alone, ctx)
            meta["distill_gain"] = meta["student_distilled_metric"] - meta["student_alone_metric"]
        elif cfg.compare_baseline:
            meta["baseline_note"] = "no training labels: a student cannot be trained alone for comparison"
        ctx.log(f"distill: teacher {meta['teacher_metric']:.4f}, student distilled "
                f"{meta['student_distilled_metric']:.4f}, alone {meta['student_alone_metric']}")
        return StepOutput(distilled, meta)

    def rebuild(self, model: nn.Module, cfg: DistillConfig, meta: dict[str, Any], *, engine: str) -> nn.Module:
        name = meta.get("student_factory", cfg.student or "width")
        factory = _STUDENTS.get(name)
        if factory is None:
            raise ModelLoadError(f"the artifact's student factory {name!r} is not registered in this installation "
                                 f"(registered: {', '.join(sorted(_STUDENTS))})")
        student = factory(model, float(meta.get("width", cfg.width)))
        made = f"{type(student).__module__}.{type(student).__qualname__}"
        if "student_class" in meta and meta["student_class"] != made:
            raise ModelLoadError(f"the student factory {name!r} now builds {made}, the artifact holds "
                                 f"{meta['student_class']}")
        return student


# ------------------------------------------------------------------------------- multi-seed comparison
@dataclass
class DistillComparison:
    """Distilled vs alone over several seeds, with an honest verdict."""

    model_name: str
    width: float
    epochs: int
    temperature: float
    alpha: float
    teacher_metric: float
    metric_name: str
    student_params: int
    teacher_params: int
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def gains(self) -> list[float]:
        return [r["student_distilled_metric"] - r["student_alone_metric"] for r in self.rows]

    @property
    def verdict(self) -> str:
        """``helps`` / ``hurts`` only if the mean gain is clearly outside the seed-to-seed spread."""
        g = self.gains
        mean = statistics.fmean(g)
        # Paired differences: "clear" when the mean exceeds its standard error twice (≈ a 95 % interval
        # for n ≥ 3 is wider still, so this is lenient; the numbers are printed beside the verdict).
        se = statistics.stdev(g) / math.sqrt(len(g)) if len(g) > 1 else float("inf")
        wins = sum(x > 0 for x in g)
        if mean > 0 and wins == len(g) and mean > 2 * se:
            return "helps"
        if mean < 0 and wins == 0 and -mean > 2 * se:
            return "hurts"
        return "no clear difference"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "gains": self.gains, "verdict": self.verdict}

    def format(self) -> str:
        """Markdown table, one row per seed, then the mean and the verdict.

        Example:
            >>> print(compare_distillation("digits_cnn", seeds=(0, 1, 2)).format())  # doctest: +SKIP
        """
        lines = [
            f"Distillation of {self.model_name} into width {self.width} "
            f"({self.student_params} vs {self.teacher_params} params), {self.epochs} epochs, "
            f"T={self.temperature}, alpha={self.alpha}; teacher {self.metric_name} {self.teacher_metric:.4f}",
            "",
            f"| seed | distilled {self.metric_name} | alone {self.metric_name} | gain (points) |",
            "|---:|---:|---:|---:|",
        ]
        for r, g in zip(self.rows, self.gains, strict=True):
            lines.append(f"| {r['seed']} | {r['student_distilled_metric']:.4f} | {r['student_alone_metric']:.4f} | "
                         f"{100 * g:+.2f} |")
        d = [r["student_distilled_metric"] for r in self.rows]
        a = [r["student_alone_metric"] for r in self.rows]
        lines.append(f"| mean | {statistics.fmean(d):.4f} | {statistics.fmean(a):.4f} | "
                     f"{100 * statistics.fmean(self.gains):+.2f} |")
        lines += ["", f"Verdict over {len(self.rows)} seeds: {self.verdict} "
                      f"(distilled better on {sum(x > 0 for x in self.gains)}/{len(self.rows)} seeds)."]
        return "\n".join(lines)


__all__ = ["DistillComparison", "DistillHandler", "FinetuneHandler", "eval_metric",
           "hinton_loss", "register_student", "student_factories", "width_student"]
