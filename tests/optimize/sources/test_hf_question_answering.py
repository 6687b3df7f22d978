"""An ``hf:`` extractive question-answering model (issue 23 item 1): ``{question, context, answer?}`` rows, judged
by the F1 of its answer span against the answer (``span_f1``) or the float model's span (``span_agreement``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from modelpress.errors import DataError, UserInputError
from modelpress.optimize.outputs import CONTEXT, GOLD_END, GOLD_START, span_metric
from tests.optimize.sources.conftest import run
from tests.own_models_fixtures import build_hf_qa, qa_rows, write_jsonl


@pytest.fixture(scope="module")
def qa(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from modelpress.optimize.sources.vision import import_torchvision

    import_torchvision()
    return build_hf_qa(tmp_path_factory.mktemp("qa"))


def _ref(q: dict[str, Path], *, eval_file: str = "eval", **over):  # type: ignore[no-untyped-def]
    from modelpress.optimize.sources import parse_model_ref

    return parse_model_ref(f"hf:{q['folder']}", data={"eval": str(q[eval_file]), "calibration": str(q["calib"])},
                           latency_batches=(1, 8), **over)


def test_span_f1_counts_overlapping_sub_tokens_and_answers_only_from_the_context() -> None:
    # Two rows of 5 sub-tokens; row 0's context is tokens 2-4, gold answer 3..4; row 1's gold is 2..2.
    marks = torch.tensor([[0, 0, CONTEXT, CONTEXT | GOLD_START, CONTEXT | GOLD_END],
                          [0, 0, CONTEXT | GOLD_START | GOLD_END, CONTEXT, CONTEXT]])
    start = torch.tensor([[9.0, 0, 0, 5, 0], [0, 0, 0, 4, 0]])  # row 0's best start (token 0) is not context
    end = torch.tensor([[0.0, 0, 0, 0, 5], [0, 0, 0, 0, 4]])
    out = torch.cat([start, end], 1)
    # Row 0: 3..4 exactly (F1 1). Row 1: predicted 3..4 against gold 2..2, no overlap (F1 0).
    assert span_metric("span_f1", out, labels=marks, reference=None) == pytest.approx(0.5)
    shifted = torch.cat([start, torch.tensor([[0.0, 0, 0, 5, 0], [0, 0, 0, 0, 4]])], 1)  # row 0 now 3..3
    # Against the float spans: row 0 3..3 vs 3..4 → P 1, R 0.5, F1 2/3; row 1 the same span → 1.
    assert span_metric("span_agreement", shifted, labels=marks, reference=out) == pytest.approx((2 / 3 + 1) / 2)


def test_each_rows_answer_is_marked_on_its_sub_tokens_in_the_context(qa) -> None:
    from modelpress.optimize.sources import get_source

    source = get_source("hf")
    td = source.load(_ref(qa)).spec.data()
    tok = source.tokenizer(str(qa["folder"]))
    marks, ids = td.eval_labels, td.eval_inputs[0]
    answers = {json.loads(line)["answer"]["text"] for line in qa["eval"].read_text().splitlines()}
    two_pieces = 0
    for i in range(ids.shape[0]):
        # One start and one end per row (every context fits in 32 tokens), inside the context, in order.
        (start,), (end,) = (marks[i] & GOLD_START).nonzero()[:, 0].tolist(), (marks[i] & GOLD_END).nonzero()[:, 0].tolist()
        assert start <= end and bool((marks[i, start:end + 1] & CONTEXT).all())
        assert tok.decode(ids[i, start:end + 1]).replace(" ##", "") in answers
        two_pieces += end > start
    assert two_pieces > 0  # plural answers: two sub-tokens, both inside the span
    # The question's tokens are not context: an answer is never taken from them.
    assert not bool((marks[:, :3] & CONTEXT).any())


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime", "openvino"])
def test_a_qa_model_is_judged_by_span_f1_and_its_artifact_returns_start_and_end_logits(qa, tmp_path: Path,
                                                                                        runtime: str) -> None:
    from modelpress.optimize import optimize_model, resolve_recipe
    from modelpress.optimize.recipes import Recipe, with_runtime
    from modelpress.optimize.runtimes.registry import get_runtime
    from modelpress.optimize.sources import get_source

    recipe = with_runtime(Recipe.from_dict({**resolve_recipe("static-int8").to_dict(), "budget": {"max_drop": 0.05}}),
                          runtime)
    r = optimize_model(model_ref=_ref(qa), recipe=recipe, engine="fbgemm", store=tmp_path, warmup=1, runs=3)
    assert r.status == "succeeded", r.reason
    assert r.metric_name == "span_f1" and r.metric_before > 0.9  # it finds the asked topic's word
    assert r.metric_after > r.metric_before - 0.05 and r.extra["reload_check"]["equal"]
    x = tuple(t[:3] for t in get_source("hf").load(_ref(qa)).spec.data().eval_inputs)
    served = get_runtime(runtime).load(Path(r.artifact_path), threads=1)(*x)
    served = list(served.values()) if isinstance(served, dict) else list(served)
    assert [tuple(t.shape) for t in served] == [(3, x[0].shape[1])] * 2


def test_without_answers_spans_are_judged_against_the_float_models(qa, tmp_path: Path) -> None:
    r = run(_ref(qa, eval_file="plain"), "dynamic-int8", tmp_path, warmup=1, runs=3)
    assert r.metric_name == "span_agreement" and r.metric_before == pytest.approx(1.0)
    assert 0.8 < r.metric_after <= 1.0


def test_a_training_step_is_refused_for_a_qa_model(qa, tmp_path: Path) -> None:
    from modelpress.optimize.sources import parse_model_ref

    train = write_jsonl(tmp_path / "train.jsonl", qa_rows(64, seed=77))
    ref = parse_model_ref(f"hf:{qa['folder']}", data={"eval": str(qa["eval"]), "train": str(train)})
    with pytest.raises(UserInputError, match="not offered for question-answering models"):
        run(ref, "qat-int8", tmp_path)


@pytest.mark.parametrize("rows, message", [
    ([{"text": "which sports"}], "a 'question' and a 'context'"),
    ([{"question": "which sports", "context": "the goal", "answer": "match"}], "'match' is not in the context"),
    ([{"question": "q", "context": "the goal", "answer": {"text": "goal", "start": 0}}],
     r"not the context's text at answer.start \(0\)"),
    ([{"question": "q", "context": "goal", "answer": "goal"}, {"question": "q", "context": "rain"}],
     "on some rows and not others"),
])
def test_submit_refuses_qa_rows_without_a_context_or_with_an_answer_outside_it(qa, tmp_path: Path, rows,
                                                                               message) -> None:
    from modelpress.optimize.sources import parse_model_ref
    from modelpress.optimize.sources.submit_hf import submit_check

    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    problems = submit_check(parse_model_ref(f"hf:{qa['folder']}", data={"eval": str(bad)}), max_bytes=1 << 30)
    assert [loc for loc, _ in problems] == [("data", "eval")] and re.search(message, problems[0][1]), problems
    assert submit_check(_ref(qa), max_bytes=1 << 30) == []


def test_answers_cut_off_by_max_length_leave_nothing_to_score_and_say_so(qa, tmp_path: Path) -> None:
    long = write_jsonl(tmp_path / "long.jsonl", [{"question": "which sports", "context": "the " * 40 + "goal",
                                                  "answer": "goal"}] * 12)
    from modelpress.optimize.sources import parse_model_ref

    with pytest.raises(DataError, match="no held-out row's answer is inside the first 32 tokens"):
        run(parse_model_ref(f"hf:{qa['folder']}", data={"eval": str(long)}), "dynamic-int8", tmp_path)
