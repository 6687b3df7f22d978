"""The ``hf:`` source's submit check (``sources.submit_hf``): its folder's config and its data's labels, no torch."""

from __future__ import annotations

from modelpress.optimize.sources import parse_model_ref
from modelpress.optimize.sources.submit_hf import submit_check
from tests.tiny_model_files import hf_folder

MB = 1 << 20


def test_an_hf_folder_whose_config_asks_for_remote_code_is_refused_naming_auto_map(tmp_path):
    folder = hf_folder(tmp_path, auto_map={"AutoModel": "modeling_x.X"})
    (tmp_path / "eval.jsonl").write_text('{"text": "goal", "label": "sports"}\n')
    ref = parse_model_ref(f"hf:{folder}", data={"eval": str(tmp_path / "eval.jsonl")})
    problems = submit_check(ref, max_bytes=MB)
    assert [loc for loc, _ in problems] == [("model",)]
    assert "auto_map" in problems[0][1] and "trust_remote_code" in problems[0][1]


def test_jsonl_labels_outside_the_class_count_or_not_a_label_name_are_refused_with_their_line(tmp_path):
    folder = hf_folder(tmp_path)
    data = tmp_path / "eval.jsonl"
    data.write_text('{"text": "goal", "label": 0}\n\n{"text": "rain", "label": 3}\n{"text": "x", "label": "jazz"}\n'
                    '{"label": 1}\nnot json\n')
    ref = parse_model_ref(f"hf:{folder}", data={"eval": str(data)})
    messages = [m for loc, m in submit_check(ref, max_bytes=MB) if loc == ("data", "eval")]
    assert "line 3: label 3 is outside the model's 3 classes" in messages[0]
    assert "line 4: label 'jazz' is not one of the model's classes" in messages[1]
    assert "line 5" in messages[2] and "text" in messages[2]
    assert "line 6: not valid JSON" in messages[3]


def test_a_train_jsonl_with_a_label_the_model_does_not_have_is_refused_at_submit_naming_the_file(tmp_path):
    folder = hf_folder(tmp_path)
    (tmp_path / "eval.jsonl").write_text('{"text": "goal", "label": "sports"}\n')
    train = tmp_path / "train.jsonl"
    train.write_text('{"text": "rain"}\n{"text": "song", "label": "jazz"}\n{"text": "goal", "label": 5}\n')
    ref = parse_model_ref(f"hf:{folder}", data={"eval": str(tmp_path / "eval.jsonl"), "train": str(train)})
    assert submit_check(ref, max_bytes=MB) == [
        (("data", "train"), "data file train.jsonl line 2: label 'jazz' is not one of the model's classes "
                            "(id2label: music, sports, weather)"),
        (("data", "train"), "data file train.jsonl line 3: label 5 is outside the model's 3 classes (0..2)")]
    train.write_text('{"text": "rain"}\n{"text": "song", "label": "music"}\n')
    assert submit_check(ref, max_bytes=MB) == []


def test_a_train_jsonl_over_the_decoded_size_limit_is_refused_at_submit_like_the_eval_file(tmp_path, monkeypatch):
    from modelpress.optimize.sources.submit import check_ref

    folder = hf_folder(tmp_path)
    (tmp_path / "eval.jsonl").write_text('{"text": "goal"}\n' * 2)
    (tmp_path / "train.jsonl").write_text('{"text": "rain"}\n' * 9)
    monkeypatch.setenv("MODELPRESS_MAX_TEXT_TOKENS", str(8 * 64))  # 8 rows at max_length 64
    ref = parse_model_ref(f"hf:{folder}", data={"eval": str(tmp_path / "eval.jsonl"),
                                                "train": str(tmp_path / "train.jsonl")}, max_length=64)
    problems = check_ref(ref, max_bytes=MB)
    assert [loc for loc, _ in problems] == [("data", "train")]
    assert problems[0][1].startswith("train.jsonl: 9 rows x max_length 64 = 576 tokens")
