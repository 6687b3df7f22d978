"""The built-in seed MLP (``mlp``) and digits CNN (``digits_cnn``), registered as entry points.

Their weights are the same bytes on every CPU: the MLP's are drawn from a seed with CPU-independent
arithmetic (``seeded_linear_init``), the CNN's were trained once by ``tools/train-builtin-weights``
(``train_builtin_digits``) and ship as package data (``zoo/data/``, loaded by ``load_shipped_weights``).
The content id of a built-in covers this module's bytes (``builtin_weights.builtin_content_id``), so the
code that draws the MLP's weights and inputs stays in this one file.

Example:
    >>> spec = mlp_spec()
    >>> spec.metric
    'top1_agreement'
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from modelpress.errors import ModelLoadError
from modelpress.optimize.spec import ModelSpec, TaskData
from modelpress.optimize.weights import load_weights, read_state_dict
from modelpress.zoo.builtin_weights import shipped_weights_file, shipped_weights_name


def load_shipped_weights(file_name: str) -> Callable[[nn.Module, Path | None], None]:
    """A ``ModelSpec.pretrained`` that loads trained weights shipped as package data (``zoo/data/``).

    The same bytes on every worker, whatever its CPU: training at first use gave each CPU family (and
    thread count) its own weights under one content id (issue 20 item 12). ``tools/train-builtin-weights`` makes the files.

    Example:
        >>> model = DigitsCNN()
        >>> load_shipped_weights("builtin-digits_cnn-v2.safetensors")(model, None)
        >>> tuple(model.classifier[3].weight.shape)
        (10, 128)
    """
    def pretrained(model: nn.Module, cache_dir: Path | None) -> None:
        from importlib import resources

        f = shipped_weights_file(file_name)
        if not f.is_file():
            raise ModelLoadError(f"the built-in weights {file_name} are missing from this modelpress install "
                                 "(package data modelpress/zoo/data/); reinstall modelpress")
        with resources.as_file(f) as path:  # a real file even when the package is zipped
            load_weights(model, read_state_dict(path, max_bytes=1 << 30))

    return pretrained


class SeedMLP(nn.Module):
    """The seed project's MLP: 512 → 1024 → 100."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(512, 1024)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(1024, 100)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(x)))


# CPU-independent random numbers. torch's samplers are compiled once per CPU capability (default, AVX2,
# AVX-512) and round differently: under ATEN_CPU_CAPABILITY=default and AVX2, half the seed MLP's
# nn.Linear init differed by one float step, and torch.randn's vectorized Box-Muller gave other inputs
# (issue 20 item 12). These use only numpy's PCG64 bit stream (defined bit for bit by the algorithm; numpy
# keeps bit generators' streams stable) and IEEE +, -, *, / and sqrt, each one numpy ufunc call (never
# fused into an FMA), which round the same on every CPU: no libm, no numpy or torch distribution code.
_SQRT_HALF = 0.7071067811865476
_LN2 = 0.6931471805599453
# 2 * atanh(f) = 2 (f + f^3/3 + ... + f^23/23): under 1e-18 relative error for |f| <= 0.1716.
_ATANH_TERMS = tuple(1.0 / k for k in range(23, 0, -2))


def _uniform(bits: np.random.PCG64, n: int) -> np.ndarray:
    """``n`` float64 uniforms in [0, 1): the top 53 bits of each 64-bit PCG64 draw, times 2**-53 (exact)."""
    return (bits.random_raw(n) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _log(x: np.ndarray) -> np.ndarray:
    """Natural log of positive float64s from exact-rounded arithmetic only (libm's log differs by CPU)."""
    m, e = np.frexp(x)  # x = m * 2**e exactly, 0.5 <= m < 1
    low = m < _SQRT_HALF
    m = np.where(low, 2.0 * m, m)  # sqrt(1/2) <= m < sqrt(2)
    e = np.where(low, e - 1, e).astype(np.float64)
    f = (m - 1.0) / (m + 1.0)
    f2 = f * f
    p = np.zeros_like(f)
    for c in _ATANH_TERMS:
        p = p * f2 + c
    return e * _LN2 + 2.0 * f * p


def _normal(seed: int, n: int) -> np.ndarray:
    """``n`` float64 N(0, 1) draws: Marsaglia's polar method on PCG64(seed) uniforms, in stream order."""
    bits = np.random.PCG64(seed)
    parts: list[np.ndarray] = [np.empty(0)]
    have = 0
    while have < n:
        pairs = (n - have) * 2 // 3 + 64  # about 78.5 % of pairs are kept; the stream order decides, not this
        u = 2.0 * _uniform(bits, 2 * pairs) - 1.0  # exact: uniform in [-1, 1)
        a, b = u[0::2], u[1::2]
        s = a * a + b * b
        keep = (s > 0.0) & (s < 1.0)
        a, b, s = a[keep], b[keep], s[keep]
        r = np.sqrt(-2.0 * _log(s) / s)
        z = np.empty(2 * len(s))
        z[0::2], z[1::2] = a * r, b * r
        parts.append(z)
        have += len(z)
    return np.concatenate(parts)[:n]


def _randn(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Fixed N(0, 1) float32 inputs, the same bits on every CPU (``torch.randn``'s differ by CPU kernel).

    Example:
        >>> x = _randn((2, 3), 1)
        >>> x.dtype, tuple(x.shape), torch.equal(x, _randn((2, 3), 1))
        (torch.float32, (2, 3), True)
    """
    return torch.from_numpy(_normal(seed, math.prod(shape)).astype(np.float32).reshape(shape))


def seeded_linear_init(model: nn.Module, seed: int) -> None:
    """Fill every ``nn.Linear`` (in module order: weight, then bias) from one PCG64(seed) stream.

    The distribution is ``nn.Linear``'s default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and
    bias, drawn so that every CPU gives the same bytes: ``(2u - 1) * bound`` in float64 (``2u - 1`` is
    exact, the product one IEEE rounding), then rounded to float32.

    Example:
        >>> a, b = SeedMLP(), SeedMLP()
        >>> seeded_linear_init(a, 0); seeded_linear_init(b, 0)
        >>> torch.equal(a.fc1.weight, b.fc1.weight), float(a.fc2.weight.abs().max()) < 1 / 32
        (True, True)
    """
    bits = np.random.PCG64(seed)
    with torch.no_grad():
        for layer in model.modules():
            if not isinstance(layer, nn.Linear):
                continue
            bound = 1.0 / math.sqrt(layer.in_features)
            for p in (layer.weight, layer.bias):
                if p is None:
                    continue
                w = (2.0 * _uniform(bits, p.numel()) - 1.0) * bound
                p.copy_(torch.from_numpy(w.astype(np.float32).reshape(tuple(p.shape))))


def _mlp_data() -> TaskData:
    # No labels exist for a random MLP: the metric is top-1 agreement with the float model on
    # fixed random inputs (eval and calibration drawn from different seeds).
    return TaskData(
        eval_inputs=_randn((2048, 512), 1),
        eval_labels=None,
        calib_inputs=_randn((256, 512), 2),
        train_inputs=_randn((2048, 512), 3),
        val_inputs=_randn((512, 512), 4),
        description="fixed N(0,1) inputs (PCG64, polar method: the same on every CPU), seeds 1 (eval) / "
                    "2 (calibration) / 4 (validation, for choices)",
    )


def _mlp_pretrained(model: nn.Module, cache_dir: Path | None) -> None:
    seeded_linear_init(model, 0)


def mlp_spec() -> ModelSpec:
    """The seed MLP: weights and inputs generated from seeds, the same bytes on every CPU.

    Nothing ships: the generating code is in this module, whose sha256 the content id covers
    (``builtin_weights.builtin_content_id``); ``tests/zoo/test_builtin_weights.py`` pins the bytes.

    Example:
        >>> mlp_spec().version, mlp_spec().shipped_weights
        (2, None)
    """
    return ModelSpec(
        name="mlp",
        # v2: weights and inputs drawn CPU-independently (v1: nn.Linear's seeded init and torch.randn,
        # whose bytes depended on the CPU's kernels).
        version=2,
        build=SeedMLP,
        data=_mlp_data,
        metric="top1_agreement",
        make_input=lambda b: _randn((b, 512), 100 + b),
        latency_batches=(1, 64),
        pretrained=_mlp_pretrained,
        description="seed MLP 512-1024-100, U(±1/sqrt(fan_in)) weights from seed 0 (the same on every CPU)",
    )


class DigitsCNN(nn.Module):
    """Small CNN for 8×8 digits: 3 conv-bn-relu blocks, max-pool, 2 linear layers (~357k params)."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3 = (max(1, round(c * width)) for c in (32, 64, 128))
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(),
            nn.Conv2d(c2, c3, 3, padding=1, bias=False), nn.BatchNorm2d(c3), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c3 * 16, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)  # bundled with scikit-learn: no download
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    def t(a: Any) -> torch.Tensor:
        return torch.tensor(a / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    return t(xtr), torch.tensor(ytr), t(xte), torch.tensor(yte)


def _digits_data() -> TaskData:
    from sklearn.model_selection import train_test_split

    xtr, ytr, xte, yte = _digits_split()
    # The 360 held-out rows are split again (stratified): 120 validation rows for choices, 240 for the
    # reported metric. Training is unchanged (the built-in weights stay the same).
    idx_val, idx_eval = train_test_split(torch.arange(len(yte)).numpy(), train_size=120, random_state=1,
                                         stratify=yte.numpy())
    iv, ie = torch.as_tensor(idx_val), torch.as_tensor(idx_eval)
    return TaskData(
        eval_inputs=xte[ie], eval_labels=yte[ie], calib_inputs=xtr[:256], train_inputs=xtr, train_labels=ytr,
        val_inputs=xte[iv], val_labels=yte[iv],
        description="scikit-learn load_digits, stratified 80/20 split (random_state=0); of the 360 held out, "
                    "240 evaluate and 120 (stratified, random_state=1) validate choices",
    )


def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, seed: int,
                     lr: float = 1e-3, batch_size: int = 64) -> nn.Module:
    """Deterministic small-data training loop (Adam, cross-entropy); returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def train_builtin_digits(model: nn.Module) -> nn.Module:
    """Train the built-in digits CNN (15 epochs, seed 0) in place; returns it in eval mode.

    Only ``tools/train-builtin-weights`` runs this: training's float sums round differently on other CPU
    families and thread counts, so workers load the file it wrote (``load_shipped_weights``) instead.

    Example:
        >>> model = train_builtin_digits(DigitsCNN())  # doctest: +SKIP
    """
    # Seeded initial weights too (not only the training loop): otherwise the weights would depend on
    # whatever the process drew from the global RNG before.
    torch.manual_seed(0)
    model.load_state_dict(type(model)().state_dict())
    xtr, ytr, _, _ = _digits_split()
    return train_classifier(model, xtr, ytr, epochs=15, seed=0)


def digits_cnn_spec() -> ModelSpec:
    """The digits CNN, with the trained weights shipped in ``zoo/data/``.

    Example:
        >>> digits_cnn_spec().shipped_weights
        'builtin-digits_cnn-v2.safetensors'
    """
    return ModelSpec(
        name="digits_cnn",
        version=2,  # v2: shipped weights (v1 trained at first use, differently on each CPU family)
        build=DigitsCNN,
        data=_digits_data,
        metric="accuracy",
        make_input=lambda b: _randn((b, 1, 8, 8), 200 + b).clamp(0, 1),
        latency_batches=(1, 64),
        pretrained=load_shipped_weights(shipped_weights_name("digits_cnn")),
        description="CNN on scikit-learn digits (8x8), trained 15 epochs, seed 0 (weights shipped)",
        shipped_weights=shipped_weights_name("digits_cnn"),
    )


__all__ = ["DigitsCNN", "SeedMLP", "digits_cnn_spec", "load_shipped_weights", "mlp_spec", "seeded_linear_init",
           "train_builtin_digits", "train_classifier"]
