"""The distilled-vs-alone student comparison that ``modelpress report --zoo`` appends to the zoo report.

One seed on digits' 360 held-out images cannot tell a real gain from noise, so ``compare_distillation``
runs the ``distill`` step (``optimize.techniques.distillation``) once per seed on a registered model and
compares the distilled student with the same student trained on the labels alone.

Example:
    >>> c = compare_distillation("digits_cnn", width=0.125, epochs=10, seeds=(0, 1, 2))  # doctest: +SKIP
    >>> print(c.format())  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from modelpress.errors import UserInputError
from modelpress.optimize.recipes import DistillConfig
from modelpress.optimize.sources.registered import materialize, resolve_model
from modelpress.optimize.techniques.distillation import DistillComparison
from modelpress.optimize.techniques.registry import StepContext, apply_step


def compare_distillation(model_name: str = "digits_cnn", *, width: float = 0.125, epochs: int = 10,
                         seeds: Sequence[int] = (0, 1, 2), temperature: float = 4.0, alpha: float = 0.7,
                         lr: float = 1e-3, batch_size: int = 64, cache_dir: str | Path | None = None,
                         teacher: nn.Module | None = None,
                         log: Callable[[str], None] = lambda m: None) -> DistillComparison:
    """Run the ``distill`` step once per seed and compare the distilled student with the student alone.

    Each seed changes the student's initial weights and the batch order, identically for both runs.
    ``teacher`` defaults to the model's built-in float weights.

    Example:
        >>> c = compare_distillation("digits_cnn", width=0.125, epochs=10, seeds=(0, 1, 2))  # doctest: +SKIP
        >>> c.verdict  # doctest: +SKIP
        'helps'
    """
    if len(seeds) < 1:
        raise UserInputError("compare_distillation needs at least one seed")
    spec = resolve_model(model_name)
    if teacher is None:
        teacher, _ = materialize(spec, weights=None, max_bytes=1 << 31,
                                 cache_dir=Path(cache_dir) if cache_dir is not None else None)
    data = spec.data()
    if data.train_labels is None:
        raise UserInputError(f"compare_distillation: model {model_name!r} has no training labels, so a student "
                             "cannot be trained alone for comparison")
    cfg = DistillConfig(width=width, epochs=epochs, temperature=temperature, alpha=alpha, lr=lr,
                        batch_size=batch_size, compare_baseline=True)
    rows: list[dict[str, Any]] = []
    first: dict[str, Any] = {}
    for seed in seeds:
        ctx = StepContext(spec=spec, data=data, engine="fbgemm", seed=seed, reference=teacher, log=log)
        meta = apply_step(teacher, cfg, ctx).meta
        first = first or meta
        rows.append({k: meta[k] for k in ("seed", "student_distilled_metric", "student_alone_metric")})
        log(f"seed {seed}: distilled {meta['student_distilled_metric']:.4f}, alone {meta['student_alone_metric']:.4f}")
    return DistillComparison(model_name=model_name, width=width, epochs=epochs, temperature=temperature, alpha=alpha,
                             teacher_metric=first["teacher_metric"], metric_name=first["metric_name"],
                             student_params=first["student_params"], teacher_params=first["teacher_params"],
                             rows=rows)


__all__ = ["compare_distillation"]
