"""Hostile ``hf:`` folders (issue 20): refused by the CLI at submit, and failed by a real worker past submit.

A shard index naming another team's staged weights by absolute path (transformers joins ``weight_map``
values with ``os.path.join``, so the absolute path wins), one climbing out with ``..``, a shard that is
not there, an ``attn_implementation`` naming a hub kernel, tokenizer code: each is one line at submit
(exit 2, no row), and a row written past submit fails on the worker with the reason, on its first
attempt, while a good folder in the same batch succeeds. The models are small random BERTs (~13 KB).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from tests.faults.record import record

INDEX = "model.safetensors.index.json"
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "goal", "match", "rain", "storm", "song", "band", "the"]


def build_tiny_bert(folder: Path, *, shard_size: str | None = None) -> Path:
    """A random 1-layer BERT classifier (3 classes) and its tokenizer, saved with save_pretrained.

    ``shard_size`` (e.g. ``"8KB"``) splits the weights into shards plus ``model.safetensors.index.json``.

    Example:
        >>> build_tiny_bert(tmp_path / "bert", shard_size="8KB")  # doctest: +SKIP
    """
    import torch

    from modelpress.optimize.hf_env import prepare_transformers

    prepare_transformers()
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB)}, do_lower_case=True, model_max_length=16)
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=16, max_position_embeddings=16, num_labels=3)
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg).eval()
    model.save_pretrained(folder, **({"max_shard_size": shard_size} if shard_size else {}))
    tok.save_pretrained(folder)
    return folder


def _eval_rows(path: Path) -> Path:
    words = VOCAB[5:]
    path.write_text("".join(json.dumps({"text": f"{words[i % 7]} {words[(i * 3) % 7]} the"}) + "\n"
                            for i in range(40)))
    return path


def _index(folder: Path) -> dict:
    return json.loads((folder / INDEX).read_text())


def _point_second_shard_at(folder: Path, target: str) -> None:
    """Every tensor of the last shard now read from ``target``; the shard itself is removed."""
    doc = _index(folder)
    last = sorted(set(doc["weight_map"].values()))[-1]
    doc["weight_map"] = {k: (target if v == last else v) for k, v in doc["weight_map"].items()}
    (folder / INDEX).write_text(json.dumps(doc))
    (folder / last).unlink()


def _absolute_path_to_staged_weights(folder: Path, other_team: Path) -> None:
    _point_second_shard_at(folder, str(other_team))


def _dot_dot(folder: Path, other_team: Path) -> None:
    _point_second_shard_at(folder, f"../{other_team.parent.name}/{other_team.name}")


def _missing_shard(folder: Path, other_team: Path) -> None:
    last = sorted(set(_index(folder)["weight_map"].values()))[-1]
    (folder / last).unlink()


def _hub_kernel_attention(folder: Path, other_team: Path) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "attn_implementation": "kernels-community/flash-attn"}))


def _tokenizer_code(folder: Path, other_team: Path) -> None:
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    tok["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    marker = folder.parent / "TOKENIZER-CODE-RAN"
    (folder / "tokenization_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")


# case → (how the folder is spoiled, words the one-line reason must hold)
CASES: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "a shard index naming another team's staged weights by absolute path":
        (_absolute_path_to_staged_weights, "which is not a file name inside the folder"),
    "a shard index climbing out of the folder with ..": (_dot_dot, "which is not a file name inside the folder"),
    "a shard named in the index but missing": (_missing_shard, "which is not in the folder"),
    "attn_implementation naming a hub kernel": (_hub_kernel_attention, "attn_implementation to "
                                                                       "'kernels-community/flash-attn'"),
    "tokenizer code (auto_map in tokenizer_config.json)": (_tokenizer_code, "tokenizer_config.json has auto_map"),
}


@pytest.fixture(scope="module")
def folders(site, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A good sharded folder, one hostile copy per case, eval data, and another team's staged weights."""
    from safetensors.torch import load_file, save_file

    from modelpress.store import ArtifactStore

    root = tmp_path_factory.mktemp("hf-folders")
    good = build_tiny_bert(root / "good", shard_size="8KB")
    assert len(set(_index(good)["weight_map"].values())) >= 2
    # Another team's weights as the store keeps them after their submit: the same tensor names, other values.
    last = sorted(set(_index(good)["weight_map"].values()))[-1]
    theirs = {k: v.clone().fill_(7.0) for k, v in load_file(str(good / last)).items()}
    save_file(theirs, str(root / "theirs.safetensors"))
    stored = ArtifactStore.from_settings(site.settings).put_file(root / "theirs.safetensors", prefix="inputs")
    other_team = ArtifactStore.from_settings(site.settings).root_path / stored.key
    assert other_team.is_file()
    out = {"good": good, "eval": _eval_rows(root / "eval.jsonl"), "other_team": other_team}
    for i, (case, (spoil, _)) in enumerate(CASES.items()):
        folder = root / f"case{i}" / "bert"
        shutil.copytree(good, folder)
        spoil(folder, other_team)
        out[case] = folder
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_the_cli_refuses_a_hostile_hf_folder_in_one_line_with_exit_2_and_writes_nothing(site, folders, case):
    rows_before = site.count_rows()
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "modelpress", "submit", "--model", f"hf:{folders[case]}",
                          "--data", f"eval={folders['eval']}", "--recipe", "dynamic-int8", "--backend", "fbgemm"],
                         env=site.env, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - started
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and CASES[case][1] in lines[0], out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
    assert took < 20, f"refusing took {took:.1f} s"
    assert site.count_rows() == rows_before
    record("bad_input", group="hf folder", case=case, stage="submit", error=lines[0].removeprefix("error: "))


def test_hostile_hf_folders_past_submit_fail_in_the_worker_once_with_the_reason_and_a_good_one_succeeds(
        site, folders):
    from modelpress.intake import resolve_paths
    from modelpress.optimize.recipes import Recipe
    from modelpress.optimize.sources import parse_model_ref

    site.worker()
    # No budget: the random model's int8 agreement decides nothing here; "succeeded" means it ran through.
    recipe = Recipe.model_validate({"name": "hf-dynamic-int8", "steps": [{"type": "quantize_dynamic"}]})
    data = {"eval": str(folders["eval"])}
    producer = site.producer()
    try:
        # ref= skips the submit-time checks, as another producer or an older client would.
        reqs = [producer.validate(model=f"hf:{folders[name]}", recipe=recipe, backend="fbgemm",
                                  ref=resolve_paths(parse_model_ref(f"hf:{folders[name]}", data=data), "/"))
                for name in ("good", *CASES)]
        sub = producer.submit_batch(reqs, name="hostile-hf-folders", kind="manifest", reuse=False)
    finally:
        producer.close()
    rows = site.wait_finished(sub.job_ids, timeout=300)
    good, *bad = (rows[i] for i in sub.job_ids)
    assert good["status"] == "succeeded" and good["artifact_uri"], good["error"]
    for (case, (_, words)), row in zip(CASES.items(), bad):
        assert row["status"] == "failed" and words in (row["error"] or ""), (case, row["error"])
        assert row["attempts"] == 1, case  # bad input is never retried
        assert not row["artifact_uri"], case  # nothing of another team's weights was written anywhere
        assert "\n" not in row["error"] and "Traceback" not in row["error"]
        record("bad_input", group="hf folder", case=case, stage="worker", error=row["error"])
    assert not (folders["tokenizer code (auto_map in tokenizer_config.json)"].parent / "TOKENIZER-CODE-RAN").exists()
