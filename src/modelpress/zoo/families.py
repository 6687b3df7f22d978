"""The architecture families teams hold, each built from a random-initialised config and saved as its users save it.

Issue 23's coverage matrix runs every family here through the pipeline, as a team's files: an ``hf:`` folder
(``save_pretrained`` of the model, its tokenizer or image processor), a timm architecture with a
``.safetensors`` state dict, or an ``export:`` program (``torch.export.save``) with a tensors file. Sizes are
small (a few layers, narrow) so that the whole matrix runs in minutes: what is checked is whether the family
goes through (loads, exports, quantizes, serves, reloads to the same outputs), not its accuracy.

Text data is the bundled sentences of the zoo's MiniLM (real English), images are generated. Nothing is
downloaded.

Example:
    >>> [f.name for f in FAMILIES][:3]
    ['BERT', 'DistilBERT', 'RoBERTa']
    >>> built = build_family(family("ViT"), "/tmp/mp-families")  # doctest: +SKIP
    >>> built.model, sorted(built.data)  # doctest: +SKIP
    ('hf:/tmp/mp-families/ViT/model', ['calibration', 'eval'])
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

#: Side of the generated images and of the vision families' inputs (small: the matrix is about paths, not speed).
IMAGE_SIDE = 64
TEXT_LENGTH = 32


@dataclass(frozen=True)
class Family:
    """One family: its name, what its users call the head, how it is saved (``kind``) and its builder."""

    name: str
    architecture: str
    kind: str  # "hf", "timm" or "export"
    build: Callable[[Path], dict[str, Any]] = field(repr=False, compare=False)
    # The recipe the matrix runs it with, when not the matrix's own: a causal LM takes weight-only quantization.
    recipe: str | None = None


@dataclass(frozen=True)
class Built:
    """A built family's files: what a manifest entry names."""

    model: str
    data: dict[str, str]
    weights: str | None = None
    preprocess: dict[str, Any] | None = None
    max_length: int | None = None


# ----------------------------------------------------------------------------- data
def _sentences() -> list[str]:
    from modelpress.zoo.text import bundled_sentences

    return bundled_sentences()


def _text_files(root: Path) -> dict[str, str]:
    rows = _sentences()
    out = {}
    for name, part in (("eval", rows[:96]), ("calibration", rows[96:128])):
        p = root / f"{name}.jsonl"
        p.write_text("".join(json.dumps({"text": t}) + "\n" for t in part), encoding="utf-8")
        out[name] = str(p)
    return out


def _image_folders(root: Path, side: int = IMAGE_SIDE) -> dict[str, str]:
    """Images only (no class subfolders): a random-initialised classifier is judged against its float self."""
    import numpy as np
    from PIL import Image

    out = {}
    for name, n, seed in (("eval", 24, 1), ("calibration", 8, 2)):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        g = np.random.default_rng(seed)
        for i in range(n):
            img = g.integers(0, 256, size=(side, side, 3)).astype(np.uint8)
            img[:: 2 + i % 5] = g.integers(0, 256, size=3)  # stripes: images differ by more than noise
            Image.fromarray(img).save(folder / f"{i:03d}.png")
        out[name] = str(folder)
    return out


# ----------------------------------------------------------------------------- tokenizers
def _bert_tokenizer() -> Any:
    """The bert-base-uncased WordPiece vocabulary the zoo's MiniLM folder ships (BERT, DistilBERT, ELECTRA)."""
    from transformers import BertTokenizerFast

    from modelpress.zoo.text import minilm_dir

    return BertTokenizerFast.from_pretrained(str(minilm_dir()), local_files_only=True)


def _byte_chars() -> list[str]:
    """The 256 printable characters byte-level BPE writes bytes as (GPT-2's scheme: printable bytes stand for
    themselves, the others are moved to code points from 256 up)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, extra = [], 0
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def _byte_vocab(specials: list[str]) -> dict[str, int]:
    """A byte-level BPE vocabulary with no merges: every byte is a token (RoBERTa, GPT-2, ModernBERT, Llama)."""
    vocab = {s: i for i, s in enumerate(specials)}
    for ch in _byte_chars():
        vocab.setdefault(ch, len(vocab))
    return vocab


def _save_tokenizer(tok: Any, folder: Path) -> int:
    tok.model_max_length = TEXT_LENGTH
    tok.save_pretrained(folder)
    return len(tok)


# ----------------------------------------------------------------------------- builders
def _hf_text(root: Path, model: Any, tok: Any) -> dict[str, Any]:
    folder = root / "model"
    model.eval().save_pretrained(folder, safe_serialization=True)
    _save_tokenizer(tok, folder)
    return {"model": f"hf:{folder}", "data": _text_files(root), "max_length": TEXT_LENGTH}


def _hf_image(root: Path, model: Any, processor: Any) -> dict[str, Any]:
    folder = root / "model"
    model.eval().save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return {"model": f"hf:{folder}", "data": _image_folders(root)}


def _seed() -> None:
    import torch

    torch.manual_seed(0)


def _bert(root: Path) -> dict[str, Any]:
    from transformers import BertConfig, BertForSequenceClassification

    _seed()
    tok = _bert_tokenizer()
    cfg = BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=64, num_labels=3)
    return _hf_text(root, BertForSequenceClassification(cfg), tok)


def _distilbert(root: Path) -> dict[str, Any]:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification, DistilBertTokenizerFast

    _seed()
    tok = DistilBertTokenizerFast(vocab=dict(_bert_tokenizer().get_vocab()))
    cfg = DistilBertConfig(vocab_size=len(tok), dim=64, n_layers=2, n_heads=2, hidden_dim=128,
                           max_position_embeddings=64, num_labels=3)
    return _hf_text(root, DistilBertForSequenceClassification(cfg), tok)


def _electra(root: Path) -> dict[str, Any]:
    from transformers import ElectraConfig, ElectraForSequenceClassification, ElectraTokenizerFast

    _seed()
    tok = ElectraTokenizerFast(vocab=dict(_bert_tokenizer().get_vocab()))
    cfg = ElectraConfig(vocab_size=len(tok), embedding_size=32, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=128, max_position_embeddings=64, num_labels=3)
    return _hf_text(root, ElectraForSequenceClassification(cfg), tok)


def _roberta(root: Path) -> dict[str, Any]:
    from transformers import RobertaConfig, RobertaForSequenceClassification, RobertaTokenizerFast

    _seed()
    tok = RobertaTokenizerFast(vocab=_byte_vocab(["<s>", "<pad>", "</s>", "<unk>", "<mask>"]), merges=[])
    cfg = RobertaConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=TEXT_LENGTH + 4, pad_token_id=1, num_labels=3)
    return _hf_text(root, RobertaForSequenceClassification(cfg), tok)


def _deberta_v2(root: Path) -> dict[str, Any]:
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification, DebertaV2TokenizerFast

    _seed()
    words = sorted({w.lower().strip(".,;:!?\"'()") for s in _sentences() for w in s.split()} - {""})
    pieces = [("[PAD]", 0.0), ("[UNK]", 0.0), ("[CLS]", 0.0), ("[SEP]", 0.0), ("[MASK]", 0.0)]
    pieces += [(f"▁{w}", -float(i % 7 + 1)) for i, w in enumerate(words)]
    pieces += [(c, -20.0) for c in sorted({c for w in words for c in w} | set(".,;:!?'\"()"))]
    tok = DebertaV2TokenizerFast(vocab=pieces, do_lower_case=True)
    cfg = DebertaV2Config(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=128, max_position_embeddings=64, relative_attention=True,
                          position_buckets=16, pos_att_type=["p2c", "c2p"], num_labels=3)
    return _hf_text(root, DebertaV2ForSequenceClassification(cfg), tok)


def _modernbert(root: Path) -> dict[str, Any]:
    from transformers import ModernBertConfig, ModernBertForSequenceClassification, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    _seed()
    vocab = _byte_vocab(["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"])
    raw = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", 0), ("[SEP]", 2)])
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
                                  unk_token="[UNK]", mask_token="[MASK]")
    cfg = ModernBertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=128, max_position_embeddings=64, pad_token_id=1, cls_token_id=0,
                           sep_token_id=2, bos_token_id=0, eos_token_id=2, global_attn_every_n_layers=2,
                           local_attention=16, num_labels=3)
    return _hf_text(root, ModernBertForSequenceClassification(cfg), tok)


def _gpt2(root: Path) -> dict[str, Any]:
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    _seed()
    tok = GPT2TokenizerFast(vocab=_byte_vocab(["<|endoftext|>"]), merges=[])
    tok.pad_token = tok.eos_token
    cfg = GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=2, n_positions=64)
    return _hf_text(root, GPT2LMHeadModel(cfg), tok)


def _llama(root: Path) -> dict[str, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizerFast

    _seed()
    vocab = _byte_vocab(["<unk>", "<s>", "</s>"])
    tok = LlamaTokenizerFast(vocab=vocab, merges=[])
    tok.pad_token = tok.unk_token
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return _hf_text(root, LlamaForCausalLM(cfg), tok)


def _vit(root: Path) -> dict[str, Any]:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    _seed()
    cfg = ViTConfig(image_size=IMAGE_SIDE, patch_size=16, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=128, num_labels=5)
    proc = ViTImageProcessor(size={"height": IMAGE_SIDE, "width": IMAGE_SIDE})
    return _hf_image(root, ViTForImageClassification(cfg), proc)


def _convnext(root: Path) -> dict[str, Any]:
    from transformers import ConvNextConfig, ConvNextForImageClassification, ConvNextImageProcessor

    _seed()
    cfg = ConvNextConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_labels=5)
    proc = ConvNextImageProcessor(size={"shortest_edge": IMAGE_SIDE}, crop_pct=0.875)
    return _hf_image(root, ConvNextForImageClassification(cfg), proc)


def _swin(root: Path) -> dict[str, Any]:
    from transformers import SwinConfig, SwinForImageClassification, ViTImageProcessor

    _seed()
    cfg = SwinConfig(image_size=IMAGE_SIDE, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4,
                     num_labels=5)
    proc = ViTImageProcessor(size={"height": IMAGE_SIDE, "width": IMAGE_SIDE})
    return _hf_image(root, SwinForImageClassification(cfg), proc)


def _efficientnet(root: Path) -> dict[str, Any]:
    from transformers import EfficientNetConfig, EfficientNetForImageClassification, EfficientNetImageProcessor

    _seed()
    # hidden_dim is the head's width before the classifier; transformers' default (2560) fits only its B7 widths,
    # so with a narrower width_coefficient it must be the rounded 1280 × 0.25 the top convolution produces.
    # 128 pixels, not IMAGE_SIDE: its stride-2 stages with 5×5 kernels and "valid" padding leave less than a
    # kernel's width of a 64-pixel image (OpenVINO refuses such a model).
    cfg = EfficientNetConfig(image_size=2 * IMAGE_SIDE, width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320,
                             num_labels=5)
    proc = EfficientNetImageProcessor(size={"height": 2 * IMAGE_SIDE, "width": 2 * IMAGE_SIDE})
    return _hf_image(root, EfficientNetForImageClassification(cfg), proc)


def _regnet(root: Path) -> dict[str, Any]:
    from transformers import ConvNextImageProcessor, RegNetConfig, RegNetForImageClassification

    _seed()
    cfg = RegNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], groups_width=8,
                       num_labels=5)
    proc = ConvNextImageProcessor(size={"shortest_edge": IMAGE_SIDE}, crop_pct=0.875)
    return _hf_image(root, RegNetForImageClassification(cfg), proc)


def _mobilevit(root: Path) -> dict[str, Any]:
    from transformers import MobileViTConfig, MobileViTForImageClassification, MobileViTImageProcessor

    _seed()
    cfg = MobileViTConfig(image_size=IMAGE_SIDE, hidden_sizes=[32, 48, 64], neck_hidden_sizes=[8, 16, 24, 24, 32, 40, 160],
                          num_labels=5)
    proc = MobileViTImageProcessor(size={"shortest_edge": IMAGE_SIDE}, crop_size={"height": IMAGE_SIDE,
                                                                                 "width": IMAGE_SIDE})
    return _hf_image(root, MobileViTForImageClassification(cfg), proc)


def _timm(root: Path, name: str) -> dict[str, Any]:
    from safetensors.torch import save_file

    from modelpress.optimize.sources.vision import import_torchvision

    import_torchvision()
    import timm

    _seed()
    model = timm.create_model(name, pretrained=False, num_classes=5).eval()
    weights = root / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return {"model": f"timm:{name}", "weights": str(weights), "data": _image_folders(root),
            "preprocess": {"resize": IMAGE_SIDE, "crop": IMAGE_SIDE}}


def _multi_output_cnn(root: Path) -> dict[str, Any]:
    """A small face-detector-like CNN: box (4), landmarks (5×2) and face logits (2), as a dict."""
    import torch
    from safetensors.torch import save_file
    from torch import nn

    class FaceNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.box, self.landmarks, self.face = nn.Linear(32, 4), nn.Linear(32, 10), nn.Linear(32, 2)

        def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
            h = self.body(image)
            return {"box": self.box(h), "landmarks": self.landmarks(h).view(-1, 5, 2), "face": self.face(h)}

    _seed()
    model = FaceNet().eval()
    x = torch.randn(40, 3, IMAGE_SIDE, IMAGE_SIDE)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(model, (x[:2],), dynamic_shapes=({0: batch},))
    path = root / "facenet.pt2"
    torch.export.save(program, str(path))
    save_file({"image": x[:32].contiguous()}, str(root / "eval.safetensors"))
    save_file({"image": x[32:].contiguous()}, str(root / "calibration.safetensors"))
    return {"model": f"export:{path}", "data": {"eval": str(root / "eval.safetensors"),
                                                 "calibration": str(root / "calibration.safetensors")}}


FAMILIES: tuple[Family, ...] = (
    Family("BERT", "BertForSequenceClassification", "hf", _bert),
    Family("DistilBERT", "DistilBertForSequenceClassification", "hf", _distilbert),
    Family("RoBERTa", "RobertaForSequenceClassification", "hf", _roberta),
    Family("DeBERTa-v2", "DebertaV2ForSequenceClassification", "hf", _deberta_v2),
    Family("ELECTRA", "ElectraForSequenceClassification", "hf", _electra),
    Family("ModernBERT", "ModernBertForSequenceClassification", "hf", _modernbert),
    Family("GPT-2", "GPT2LMHeadModel", "hf", _gpt2, recipe="int8-weight-only"),
    Family("Llama", "LlamaForCausalLM", "hf", _llama, recipe="int8-weight-only"),
    Family("ViT", "ViTForImageClassification", "hf", _vit),
    Family("ConvNeXt", "ConvNextForImageClassification", "hf", _convnext),
    Family("Swin", "SwinForImageClassification", "hf", _swin),
    Family("EfficientNet", "EfficientNetForImageClassification", "hf", _efficientnet),
    Family("MobileNetV3", "timm mobilenetv3_small_100", "timm", lambda r: _timm(r, "mobilenetv3_small_100")),
    Family("RegNet", "RegNetForImageClassification", "hf", _regnet),
    Family("MobileViT", "MobileViTForImageClassification", "hf", _mobilevit),
    Family("EfficientViT", "timm efficientvit_b0", "timm", lambda r: _timm(r, "efficientvit_b0")),
    Family("multi-output CNN", "export: box, landmarks, face", "export", _multi_output_cnn),
)


def family(name: str) -> Family:
    """The family called ``name`` (case-insensitive).

    Example:
        >>> family("vit").architecture
        'ViTForImageClassification'
    """
    for f in FAMILIES:
        if f.name.lower() == name.lower():
            return f
    raise KeyError(f"no family {name!r}; known: {', '.join(f.name for f in FAMILIES)}")


def build_family(fam: Family, root: str | Path) -> Built:
    """Build ``fam``'s files under ``root/<name>`` (random weights, seeded) and return what names them.

    Example:
        >>> build_family(family("BERT"), "/tmp/mp-families").model  # doctest: +SKIP
        'hf:/tmp/mp-families/BERT/model'
    """
    from modelpress.optimize.hf_env import prepare_transformers

    prepare_transformers()
    folder = Path(root) / fam.name.replace(" ", "-")
    folder.mkdir(parents=True, exist_ok=True)
    random.seed(0)
    return Built(**fam.build(folder))


__all__ = ["Built", "FAMILIES", "Family", "IMAGE_SIDE", "build_family", "family"]
