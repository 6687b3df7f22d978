"""The teacher's outputs on the train rows, cached once: the same targets a live teacher gives, padding masked."""

from __future__ import annotations

import pytest
import torch

from modelpress.optimize.techniques.distill_float import _row_lengths, match_points
from modelpress.optimize.techniques.registry import StepContext
from modelpress.optimize.techniques.teacher_cache import Taps, TeacherCache, hidden_loss, length_mask
from modelpress.optimize.techniques.transformer_pruning import training_view
from tests.optimize.techniques.tiny_encoders import load_encoder


@pytest.fixture(scope="module")
def view(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    spec, model, data = load_encoder(tmp_path_factory.mktemp("enc"))
    ctx = StepContext(spec=spec, data=data, engine="x86", reference=model)
    teacher, trim, _ = training_view(model, ctx)
    inputs = tuple(data.train_inputs)
    return teacher, trim, inputs


def test_cached_targets_equal_what_the_teacher_gives_live_on_a_batch_of_mixed_lengths(view) -> None:
    teacher, trim, inputs = view
    lengths = _row_lengths(inputs, trim)
    assert lengths is not None and int(lengths.min()) < int(lengths.max())  # rows of different lengths
    points = match_points(teacher, teacher, trim(tuple(t[:4] for t in inputs)))
    cache = TeacherCache.build(teacher, inputs, trim, points, lengths)
    assert cache is not None and points
    idx = torch.tensor([int(torch.argmin(lengths)), int(torch.argmax(lengths)), 3])
    x = trim(tuple(t[idx] for t in inputs))
    out, hidden, mask = cache.get(idx, int(x[0].shape[1]))
    taps = Taps(teacher, points, detach=True)
    with torch.no_grad():
        live = teacher(*x)
    taps.close()
    torch.testing.assert_close(out, live, atol=1e-4, rtol=1e-4)
    assert mask is not None and mask.sum(1).tolist() == lengths[idx].tolist()
    for p in points:
        real = mask.unsqueeze(-1).expand_as(taps.seen[p])
        # float16 targets: close to the live hidden states on every real token; zeros on padding.
        torch.testing.assert_close(hidden[p][real], taps.seen[p][real], atol=2e-2, rtol=1e-2)
        assert not bool(hidden[p][~real].any())


def test_nothing_is_cached_when_the_rows_would_take_more_than_the_budget(view) -> None:
    teacher, trim, inputs = view
    lengths = _row_lengths(inputs, trim)
    points = match_points(teacher, teacher, trim(tuple(t[:4] for t in inputs)))
    assert TeacherCache.build(teacher, inputs, trim, points, lengths, max_bytes=10_000) is None


def test_a_cache_of_mostly_short_rows_is_kept_when_its_real_size_fits_the_budget(view) -> None:
    # Shortest rows come first; scaling their size by the longest row's length refused caches well under budget.
    teacher, trim, inputs = view
    lengths = _row_lengths(inputs, trim)
    assert lengths is not None
    points = match_points(teacher, teacher, trim(tuple(t[:4] for t in inputs)))
    full = TeacherCache.build(teacher, inputs, trim, points, lengths)
    assert full is not None
    longest_bound = full.outputs[0].numel() * 4 * len(lengths) + sum(
        int(lengths.max()) * rows[0][0].numel() * 2 * len(lengths) for rows in full.hidden.values())
    assert full.nbytes < longest_bound  # the rows differ in length, so the two bounds differ
    kept = TeacherCache.build(teacher, inputs, trim, points, lengths, max_bytes=full.nbytes)
    assert kept is not None and kept.nbytes == full.nbytes
    assert TeacherCache.build(teacher, inputs, trim, points, lengths, max_bytes=full.nbytes - 1) is None


def test_the_hidden_state_loss_ignores_padding_and_is_scale_free() -> None:
    t = torch.randn(2, 5, 8)
    s = t + 0.1 * torch.randn(2, 5, 8)
    mask = length_mask(torch.tensor([3, 5]), 5)
    s_padded = s.clone()
    s_padded[0, 3:] = 100.0  # what a student does at row 0's padding does not count
    assert torch.isclose(hidden_loss(s_padded, t, mask), hidden_loss(s, t, mask))
    assert torch.isclose(hidden_loss(10 * s, 10 * t, mask), hidden_loss(s, t, mask), rtol=1e-4)
    assert float(hidden_loss(t, t, mask)) == 0.0
