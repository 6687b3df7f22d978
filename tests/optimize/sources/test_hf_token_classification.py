"""An ``hf:`` token classifier (issue 23 item 1): rows of words, judged per word on its first sub-token, by its
tags (``token_accuracy``) or by agreement with the float model (``token_agreement``), in every runtime."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from modelpress.errors import DataError, UserInputError
from tests.optimize.sources.conftest import run
from tests.own_models_fixtures import TAGS, build_hf_tagger, tagged_rows, write_jsonl


@pytest.fixture(scope="module")
def tagger(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from modelpress.optimize.sources.vision import import_torchvision

    import_torchvision()
    return build_hf_tagger(tmp_path_factory.mktemp("tagger"))


def _ref(t: dict[str, Path], *, eval_file: str = "eval", **over):  # type: ignore[no-untyped-def]
    from modelpress.optimize.sources import parse_model_ref

    return parse_model_ref(f"hf:{t['folder']}", data={"eval": str(t[eval_file]), "calibration": str(t["calib"])},
                           latency_batches=(1, 8), **over)


def test_each_words_first_sub_token_carries_its_tag_and_every_other_position_none(tagger) -> None:
    from modelpress.optimize.sources import get_source

    loaded = get_source("hf").load(_ref(tagger))
    assert loaded.spec.metric == "token_accuracy"
    td = loaded.spec.data()
    rows = [json.loads(line) for line in tagger["eval"].read_text().splitlines()]
    ids, pos = td.val_inputs[0], td.val_labels
    # Validation rows are a seeded sample of the file: find each by its token ids, then check its positions.
    tok = get_source("hf").tokenizer(str(tagger["folder"]))
    by_ids = {tuple(tok(r["tokens"], is_split_into_words=True, padding="max_length", max_length=ids.shape[1],
                        truncation=True)["input_ids"]): r for r in rows}
    plural_seen = 0
    for i in range(ids.shape[0]):
        row = by_ids[tuple(ids[i].tolist())]
        words = pos[i][pos[i] != -100]
        assert words.tolist() == [TAGS.index(t) for t in row["labels"]]  # one position per word, in order
        plural_seen += sum(w.endswith("s") and w not in ("was",) for w in row["tokens"])
    assert plural_seen > 0  # rows with two-piece words were among them, and still one position per word
    # Positions that are not words: [CLS], later sub-tokens, [SEP] and padding.
    assert int((pos == -100).sum()) > int((pos >= 0).sum())


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime", "openvino"])
def test_a_tagger_is_judged_by_its_tags_per_word_and_its_artifact_returns_per_token_logits(
        tagger, tmp_path: Path, runtime: str) -> None:
    from modelpress.optimize import optimize_model, resolve_recipe
    from modelpress.optimize.recipes import Recipe, with_runtime
    from modelpress.optimize.runtimes.registry import get_runtime

    recipe = with_runtime(Recipe.from_dict({**resolve_recipe("static-int8").to_dict(), "budget": {"max_drop": 0.05}}),
                          runtime)
    r = optimize_model(model_ref=_ref(tagger), recipe=recipe, engine="fbgemm", store=tmp_path, warmup=1, runs=3)
    assert r.status == "succeeded", r.reason
    assert r.runtime == runtime and r.metric_name == "token_accuracy"
    assert r.metric_before > 0.9  # the tagger learnt B/I runs (chance: 1 in 7)
    assert r.metric_after > r.metric_before - 0.05
    assert r.extra["reload_check"]["equal"]
    ids = tuple(t[:3] for t in _ref_inputs(tagger))
    served = get_runtime(runtime).load(Path(r.artifact_path), threads=1)(*ids)
    assert tuple(served.shape) == (3, ids[0].shape[1], len(TAGS))


def _ref_inputs(tagger):  # type: ignore[no-untyped-def]
    from modelpress.optimize.sources import get_source

    return get_source("hf").load(_ref(tagger)).spec.data().eval_inputs


def test_without_tags_the_words_are_judged_by_agreement_with_the_float_model(tagger, tmp_path: Path) -> None:
    r = run(_ref(tagger, eval_file="plain"), "dynamic-int8", tmp_path, warmup=1, runs=3)
    assert r.metric_name == "token_agreement" and r.metric_before == pytest.approx(1.0)
    assert 0.9 < r.metric_after <= 1.0


def test_asking_for_accuracy_without_tags_is_refused(tagger, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="'labels' \\(one tag per word\\)"):
        run(_ref(tagger, eval_file="plain", metric="accuracy"), "dynamic-int8", tmp_path)


def test_a_training_step_is_refused_for_a_tagger_on_the_worker_and_leaves_nothing(tagger, tmp_path: Path) -> None:
    from modelpress.optimize.sources import parse_model_ref

    train = write_jsonl(tmp_path / "train.jsonl", tagged_rows(64, seed=77))
    ref = parse_model_ref(f"hf:{tagger['folder']}", data={"eval": str(tagger["eval"]), "train": str(train),
                                                          "calibration": str(tagger["calib"])})
    with pytest.raises(UserInputError, match="not offered for token classifiers"):
        run(ref, "qat-int8", tmp_path)
    assert not (tmp_path / "artifacts").exists() and not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("rows, message", [
    ([{"text": "goal match"}], r"line 1: unknown field\(s\) \['text'\]"),
    ([{"tokens": ["goal", "match"], "labels": ["B-SPORTS"]}], "one tag per word"),
    ([{"tokens": ["goal"], "labels": ["B-CATS"]}], "'B-CATS' is not one of the model's classes"),
    ([{"tokens": ["goal"], "labels": [99]}], "label 99 is outside the model's 7 classes"),
    ([{"tokens": ["goal"], "labels": ["B-SPORTS"]}, {"tokens": ["rain"]}], "on some rows and not others"),
])
def test_submit_refuses_a_tagger_file_that_is_not_words_with_one_known_tag_each(tagger, tmp_path: Path, rows,
                                                                                 message) -> None:
    from modelpress.optimize.sources import parse_model_ref
    from modelpress.optimize.sources.submit_hf import submit_check

    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    problems = submit_check(parse_model_ref(f"hf:{tagger['folder']}", data={"eval": str(bad)}), max_bytes=1 << 30)
    assert [loc for loc, _ in problems] == [("data", "eval")]
    assert re.search(message, problems[0][1]), problems
    assert submit_check(_ref(tagger), max_bytes=1 << 30) == []
