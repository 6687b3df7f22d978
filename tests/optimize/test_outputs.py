"""``optimize.outputs``: several outputs packed into one tensor per batch, each judged, the primary reported."""

from __future__ import annotations

import pytest
import torch

from modelpress.optimize.measure import compute_metric, predict
from modelpress.optimize.outputs import OutputSpec, OutputsMetric, output_metric, pack


def test_outputs_are_packed_side_by_side_per_row_and_a_single_output_is_left_as_it_is() -> None:
    a, b = torch.arange(6.).reshape(2, 3), torch.arange(8.).reshape(2, 2, 2)
    assert torch.equal(pack((a, b)), torch.cat([a, b.reshape(2, 4)], 1))
    assert torch.equal(pack({"a": a, "b": b}), pack([a, b]))
    x = torch.randn(2, 2, 2)
    assert torch.equal(pack(x), x)  # unchanged: single-output models keep their shapes


def test_an_output_without_the_batch_first_is_refused() -> None:
    with pytest.raises(RuntimeError, match="batch as its first dimension"):
        pack((torch.zeros(2, 3), torch.zeros(3)))


def test_predict_concatenates_packed_batches_of_a_model_with_several_outputs() -> None:
    class Two(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x * 2, x.sum(1, keepdim=True)

    x = torch.randn(7, 3)
    out = predict(Two().eval(), x, batch_size=3)
    assert out.shape == (7, 4) and torch.equal(out[:, 3:], x.sum(1, keepdim=True))


def test_each_output_is_scored_and_the_primary_is_the_reported_metric() -> None:
    m = OutputsMetric((OutputSpec("emb", 3, "cosine"), OutputSpec("cls", 2, "accuracy", 0),
                       OutputSpec("score", 1, "cosine")), primary=1)
    ref = torch.tensor([[1., 0., 0., 0., 1., 1.], [0., 1., 0., 1., 0., 2.]])
    got = ref.clone()
    got[1, 3:5] = torch.tensor([0., 1.])  # row 2's class flips
    got[:, 5] *= 3  # the score is scaled: same direction over the rows
    labels = torch.tensor([[1], [0]])
    each = {e["output"]: e["value"] for e in m.each(got, labels=labels, reference=ref)}
    assert each == {"emb": pytest.approx(1.0), "cls": 0.5, "score": pytest.approx(1.0)}
    assert compute_metric(m, got, labels=labels, reference=ref) == 0.5 and str(m) == "accuracy[cls]"
    # Without labels (calibration rows), the labelled output is judged by agreement with float instead.
    assert compute_metric(m.without_labels(), got, labels=None, reference=ref) == 0.5
    assert m.without_labels().outputs[1].metric == "top1_agreement"


def test_a_one_value_output_is_compared_over_its_column_not_by_sign_per_row() -> None:
    m = OutputsMetric((OutputSpec("score", 1, "cosine"),), primary=0)
    ref = torch.tensor([[1.], [2.], [3.]])
    # Per row every positive value has cosine 1 with every other; over the column, order and scale show.
    assert m.score(torch.tensor([[3.], [2.], [1.]]), labels=None, reference=ref) < 0.72


def test_the_primary_output_must_be_one_of_the_outputs() -> None:
    outs = [torch.zeros(2, 4), torch.zeros(2, 2)]
    assert output_metric(outs, ["a", "b"], primary=None, primary_metric=None, labelled={}).primary == 0
    with pytest.raises(ValueError, match=r"'c' is not an output.*\['a', 'b'\]"):
        output_metric(outs, ["a", "b"], primary="c", primary_metric=None, labelled={})
