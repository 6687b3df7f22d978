"""Selection rows: with a budget's ``confidence``, a candidate's score is a bootstrap lower bound, not the mean."""

from __future__ import annotations

import torch

from modelpress.optimize.choose import Selection
from modelpress.optimize.recipes import Budget


def _rows(n: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(n, 16, generator=g)
    out = ref.clone()
    # Three rows in sixty far off (cosine about 0.7), the rest exact: a mean drop of about 0.015.
    for i in (5, 25, 45):
        out[i] = 0.7 * ref[i] + 0.714 * ref[i].norm() * torch.nn.functional.normalize(torch.randn(16, generator=g), dim=0)
    return ref, out


def test_a_candidate_within_the_budget_on_its_mean_misses_it_at_a_confidence_its_rows_cannot_support() -> None:
    ref, out = _rows()
    budget = Budget(max_drop=0.02, confidence=0.9)
    mean = Selection("validation", None, None, "cosine", ref, 32).score_outputs(out)
    bound = Selection("validation", None, None, "cosine", ref, 32, confidence=0.9)
    low = bound.score_outputs(out)
    assert 0.98 < mean < 0.99 and budget.allows(before=1.0, after=mean)
    assert low < mean - 0.004 and not budget.allows(before=1.0, after=low)
    # Fixed draws: the same outputs score the same, so two candidates are compared on the same resamples.
    assert bound.score_outputs(out) == low
    assert bound.confidence == 0.9


def test_a_candidate_that_misses_nothing_on_any_row_scores_its_mean_at_any_confidence() -> None:
    ref, _ = _rows()
    uniform = ref * 2.0  # cosine 1 on every row: nothing to resample
    assert Selection("validation", None, None, "cosine", ref, 32, confidence=0.99).score_outputs(uniform) == \
        Selection("validation", None, None, "cosine", ref, 32).score_outputs(uniform)


def test_the_bound_on_accuracy_is_on_the_paired_drop_from_the_float_models_own_rows() -> None:
    labels = torch.tensor([0, 1] * 30)
    ref = torch.nn.functional.one_hot(labels, 2).float()
    ref[:6] = ref[:6].flip(1)  # the float model itself is wrong on 6 rows: accuracy 0.9
    out = ref.clone()
    out[6:9] = out[6:9].flip(1)  # the candidate loses 3 more rows
    sel = Selection("validation", None, labels, "accuracy", ref, 32, confidence=0.9)
    assert abs(sel.before - 0.9) < 1e-6
    low = sel.score_outputs(out)
    # The drop (3 rows of 60 = 0.05) is bounded above by more than itself: the score sits below the mean 0.85.
    assert low < 0.85 - 0.01
