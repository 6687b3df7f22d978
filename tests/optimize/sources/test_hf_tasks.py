"""An ``hf:`` folder's task comes from its config's architecture: heads modelpress does not judge are refused,
at submit and on the worker, never judged as a mean-pooled embedder (issue 23 item 1)."""

from __future__ import annotations

import pytest

from modelpress.errors import ModelLoadError
from modelpress.optimize.sources import parse_model_ref
from modelpress.optimize.sources.hf_tasks import SUPPORTED, hf_task
from modelpress.optimize.sources.submit_hf import submit_check
from tests.tiny_model_files import hf_folder


def _names(mapping: dict) -> set[str]:
    out: set[str] = set()
    for v in mapping.values():
        out |= {v} if isinstance(v, str) else set(v)
    return out


def test_every_head_class_transformers_knows_gets_its_task_and_only_supported_tasks_pass():
    from transformers.models.auto import modeling_auto as m

    for task, mapping in (("token-classification", m.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES),
                          ("image-classification", m.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES),
                          ("question-answering", m.MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES),
                          ("causal-lm", m.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)):
        judged = {n: hf_task({"architectures": [n]}) for n in _names(mapping)}
        assert task in SUPPORTED and sum(t == task for t in judged.values()) > 0.9 * len(judged), task
        assert not {n: t for n, t in judged.items() if t in ("embedding", "sequence-classification")}, task
    heads = {
        "masked-lm": m.MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    }
    causal = set(_names(m.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES))
    for task, mapping in heads.items():
        # XLM's and Flaubert's ``*WithLMHeadModel`` are in both mappings: transformers loads them as causal LMs too.
        judged = {n: hf_task({"architectures": [n]}) for n in _names(mapping) if n not in causal}
        # None of them is silently taken for an embedder or a sequence classifier.
        assert not {n: t for n, t in judged.items() if t in SUPPORTED}, task
        assert sum(t == task for t in judged.values()) > 0.9 * len(judged), task
    classifiers = _names(m.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)
    assert {hf_task({"architectures": [n]}) for n in classifiers} == {"sequence-classification"}
    base = {n for n in _names(m.MODEL_MAPPING_NAMES) if n in ("BertModel", "MPNetModel", "XLMRobertaModel",
                                                             "DistilBertModel", "ModernBertModel")}
    assert len(base) == 5 and {hf_task({"architectures": [n]}) for n in base} == {"embedding"}


def _folder(tmp_path, arch: str):
    folder = hf_folder(tmp_path, architectures=[arch])
    (tmp_path / "eval.jsonl").write_text('{"text": "goal"}\n')
    return parse_model_ref(f"hf:{folder}", data={"eval": str(tmp_path / "eval.jsonl")})


@pytest.mark.parametrize("arch, task", [("BertForMaskedLM", "masked-lm"), ("T5ForConditionalGeneration",
                                         "text-generation (encoder-decoder or multimodal)"),
                                        ("BertForMultipleChoice", "multiple-choice")])
def test_a_masked_lm_seq2seq_or_multiple_choice_folder_is_refused_at_submit_naming_its_task_and_what_is_supported(
        tmp_path, arch, task):
    problems = submit_check(_folder(tmp_path, arch), max_bytes=1 << 20)
    assert [loc for loc, _ in problems] == [("model",)]
    msg = problems[0][1]
    assert f"names architecture {arch}, a {task} model" in msg
    assert "*ForSequenceClassification" in msg and "*ForTokenClassification" in msg and "BertModel" in msg
    assert "*ForQuestionAnswering" in msg and "*ForImageClassification" in msg and "*ForCausalLM" in msg
    assert "not judged as an embedder" in msg


def test_a_folder_that_reaches_a_worker_past_submit_is_refused_there_too(tmp_path):
    from modelpress.optimize.sources import get_source

    ref = _folder(tmp_path, "BertForMaskedLM")
    with pytest.raises(ModelLoadError, match="a masked-lm model.*model.base_model.save_pretrained"):
        get_source("hf").load(ref)


@pytest.mark.parametrize("arch", ["BertForSequenceClassification", "BertForTokenClassification",
                                  "BertForQuestionAnswering", "ViTForImageClassification", "BertModel"])
def test_every_supported_head_passes_the_task_check(tmp_path, arch):
    ref = _folder(tmp_path, arch)
    assert [m for _, m in submit_check(ref, max_bytes=1 << 20) if "architecture" in m] == []
