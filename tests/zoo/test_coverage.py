"""The coverage matrix's families and runner (issue 23 item 4): every family builds as its users save it and
goes through submit's checks (or is refused naming its task); the runner turns outcomes into PASS, REJECTED
or FAIL with the reason; ``modelpress report --coverage`` prints the matrix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelpress.zoo.coverage import Cell, format_matrix, run_coverage
from modelpress.zoo.families import FAMILIES, build_family
from tests.conftest import ROOT

ISSUE_LIST = {"BERT", "DistilBERT", "RoBERTa", "DeBERTa-v2", "ELECTRA", "ModernBERT", "GPT-2", "Llama", "ViT",
              "ConvNeXt", "Swin", "EfficientNet", "MobileNetV3", "RegNet", "MobileViT", "EfficientViT",
              "multi-output CNN"}


def test_the_families_are_the_issues_list() -> None:
    assert {f.name for f in FAMILIES} == ISSUE_LIST


def test_every_family_builds_and_passes_submit_or_is_refused_naming_its_task(tmp_path: Path) -> None:
    from modelpress.optimize.sources import parse_model_ref
    from modelpress.optimize.sources.submit import check_ref

    refused = {}
    for fam in FAMILIES:
        built = build_family(fam, tmp_path)
        ref = parse_model_ref(built.model, weights=built.weights, data=built.data, preprocess=built.preprocess,
                              max_length=built.max_length)
        problems = check_ref(ref, max_bytes=1 << 32)
        if problems:
            refused[fam.name] = problems[0][1]
        if built.model.startswith("hf:"):  # saved as users save it: config, safetensors weights, tokenizer/processor
            folder = Path(built.model[3:])
            assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file(), fam.name
            assert any((folder / n).is_file() for n in ("tokenizer.json", "preprocessor_config.json")), fam.name
    assert refused == {}


def test_outcomes_become_pass_rejected_or_fail_with_the_reason(tmp_path: Path) -> None:
    cells = run_coverage(store=tmp_path, families=["multi-output CNN", "Llama"], runtimes=["torch", "onnxruntime"])
    by = {(c.family, c.runtime): c for c in cells}
    assert by["multi-output CNN", "torch"].status in ("PASS", "REJECTED") and by["multi-output CNN", "torch"].metric_name
    # A causal LM runs its own recipe (int8-weight-only): through in torch, refused with the reason in ONNX Runtime.
    assert by["Llama", "torch"].status == "PASS" and by["Llama", "torch"].metric_name == "perplexity"
    assert by["Llama", "onnxruntime"].status == "FAIL" and "does not serve causal LMs" in by["Llama", "onnxruntime"].reason
    text = format_matrix(cells, features=["avx2"])
    assert "| Llama | LlamaForCausalLM | PASS | FAIL (" in text and "**Llama × onnxruntime: FAIL**: " in text


def test_the_matrix_lists_each_reason_once_under_the_table() -> None:
    cells = [Cell("A", "a", "torch", "PASS"), Cell("A", "a", "openvino", "REJECTED", "cosine 0.91 < 0.99"),
             Cell("B", "b", "torch", "FAIL", "export failed"), Cell("B", "b", "openvino", "FAIL", "export failed")]
    text = format_matrix(cells, features=[])
    assert text.splitlines()[0] == "CPU features: none"
    assert "| A | a | PASS | REJECTED (1) |" in text and "| B | b | FAIL (2) | FAIL (3) |" in text
    assert "(1) **A × openvino: REJECTED**: cosine 0.91 < 0.99" in text


def test_report_coverage_prints_the_matrix_and_refuses_unknown_names(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "MODELPRESS_HOME": str(tmp_path / "mp")}
    cli = [sys.executable, "-m", "modelpress", "report"]
    bad = subprocess.run([*cli, "--coverage", "--families", "Cobol"], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "no family 'Cobol'" in bad.stderr
    bad = subprocess.run([*cli, "--families", "ViT"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "go with --coverage" in bad.stderr
    ok = subprocess.run([*cli, "--coverage", "--families", "Llama", "--runtimes", "openvino"], capture_output=True,
                        text=True, env=env, cwd=ROOT, timeout=600)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "| Llama | LlamaForCausalLM | PASS |" in ok.stdout and "CPU features:" in ok.stdout
