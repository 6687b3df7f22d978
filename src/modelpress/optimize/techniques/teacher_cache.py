"""The teacher's outputs and hidden states on the train rows, computed once instead of at every step.

Distillation runs the float teacher on every batch it trains on, and the teacher does not change: caching what
it gives for each train row removes a forward pass from every step (a third to two fifths of a step's compute
when the student is a pruned copy of the teacher). Rows of a trimmed training view (``hf:``) are kept at their
own length, and a batch is padded back to its longest with a mask saying which positions are real, so the
hidden-state loss is over real tokens only, cached or not. Hidden states are kept in float16 (targets of a
mean-square loss, normalised by their own scale); outputs in float32. Nothing is cached when the estimate is
over the byte budget: the teacher then runs live, as before.

Example:
    >>> import torch
    >>> from torch import nn
    >>> teacher = nn.Sequential(nn.Linear(3, 2))
    >>> rows = (torch.randn(5, 3),)
    >>> cache = TeacherCache.build(teacher, rows, lambda b: b, [], None, max_bytes=1 << 20)
    >>> out, hidden, mask = cache.get(torch.tensor([0, 4]), length=None)
    >>> torch.allclose(out, teacher(rows[0][[0, 4]])), hidden, mask
    (True, {}, None)
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

Trim = Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]
TEACHER_CACHE_MAX_BYTES = 1 << 30
_CHUNK = 64


class Taps:
    """Forward pre-hooks that keep the input of named modules during one forward."""

    def __init__(self, model: nn.Module, names: list[str], *, detach: bool) -> None:
        self.seen: dict[str, torch.Tensor] = {}
        self._hooks = [model.get_submodule(n).register_forward_pre_hook(self._tap(n, detach)) for n in names]

    def _tap(self, name: str, detach: bool) -> Callable[..., None]:
        def f(m: nn.Module, a: tuple[Any, ...]) -> None:
            if a and isinstance(a[0], torch.Tensor):
                self.seen[name] = a[0].detach() if detach else a[0]
        return f

    def close(self) -> None:
        for h in self._hooks:
            h.remove()


def length_mask(lengths: torch.Tensor | None, length: int | None) -> torch.Tensor | None:
    """``[rows, length]``: True where a position is one of the row's own tokens (None without lengths).

    Example:
        >>> length_mask(torch.tensor([1, 3]), 3).tolist()
        [[True, False, False], [True, True, True]]
    """
    if lengths is None or length is None:
        return None
    return torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)


def hidden_loss(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean-square error of a student's hidden state against the teacher's, over real positions only,
    normalised by the teacher's mean square there (so layers of different scale weigh alike).

    Example:
        >>> t = torch.ones(1, 2, 4)
        >>> s = torch.cat([torch.ones(1, 1, 4), torch.full((1, 1, 4), 9.0)], dim=1)  # position 2 is padding
        >>> float(hidden_loss(s, t, torch.tensor([[True, False]])))
        0.0
    """
    t = t.to(s.dtype)
    if mask is None or s.dim() < 3 or tuple(s.shape[:2]) != tuple(mask.shape):
        return nn.functional.mse_loss(s, t) / (t.pow(2).mean() + 1e-6)
    m = mask.unsqueeze(-1).to(s.dtype)
    n = m.sum() * s.shape[-1]
    return ((s - t).pow(2) * m).sum() / n / ((t.pow(2) * m).sum() / n + 1e-6)


def estimate_bytes(out: torch.Tensor, seen: dict[str, torch.Tensor], lengths: torch.Tensor | None, n: int) -> int:
    """What ``n`` rows will take, from one chunk's output and hidden states: outputs in float32 at their own
    shape, hidden states in float16 at each row's own length (``lengths``; else at the chunk's).

    Each row is counted at its length, not the longest row's: a scale-by-the-longest bound refused caches of
    533 and 798 MB under a 1 GiB budget, and the teacher then ran at every step.

    Example:
        >>> h = {"block": torch.zeros(2, 8, 4)}                    # a chunk of 2 rows trimmed to 8 tokens
        >>> estimate_bytes(torch.zeros(2, 3), h, torch.tensor([8, 2, 5]), 3)
        156
    """
    per_row_out = out[0].numel() * 4
    total = per_row_out * n
    for h in seen.values():
        if lengths is not None and h.dim() >= 3:
            total += int(lengths.sum()) * (h[0, 0].numel() * 2)  # one position of one row, float16
        else:
            total += n * h[0].numel() * 2
    return total


class TeacherCache:
    """Per train row: the teacher's output, and its hidden state at each match point (at the row's length)."""

    def __init__(self, outputs: torch.Tensor, hidden: dict[str, list[torch.Tensor]], lengths: torch.Tensor | None,
                 nbytes: int) -> None:
        self.outputs, self.hidden, self.lengths, self.nbytes = outputs, hidden, lengths, nbytes

    @classmethod
    @torch.no_grad()
    def build(cls, teacher: nn.Module, inputs: tuple[torch.Tensor, ...], trim: Trim, points: list[str],
              lengths: torch.Tensor | None, *, max_bytes: int = TEACHER_CACHE_MAX_BYTES) -> "TeacherCache | None":
        """The cache for every row of ``inputs``, or None when it would take more than ``max_bytes``."""
        n = int(inputs[0].shape[0])
        order = torch.argsort(lengths, stable=True) if lengths is not None else torch.arange(n)
        taps = Taps(teacher, points, detach=True)
        try:
            outputs: torch.Tensor | None = None
            hidden: dict[str, list[torch.Tensor]] = {p: [torch.empty(0)] * n for p in points}
            nbytes = 0
            for start in range(0, n, _CHUNK):
                idx = order[start:start + _CHUNK]
                out = teacher(*trim(tuple(t[idx] for t in inputs))).float()
                if outputs is None:
                    if estimate_bytes(out, taps.seen, lengths, n) > max_bytes:
                        return None
                    outputs = torch.empty((n, *out.shape[1:]), dtype=torch.float32)
                outputs[idx] = out
                for p, h in taps.seen.items():
                    for j, row in enumerate(idx.tolist()):
                        keep = h[j, : int(lengths[row])] if lengths is not None and h.dim() >= 3 else h[j]
                        hidden[p][row] = keep.to(torch.float16).clone()
                        nbytes += hidden[p][row].numel() * 2
                if nbytes > max_bytes:
                    return None
        finally:
            taps.close()
        assert outputs is not None
        return cls(outputs, hidden, lengths, nbytes + outputs.numel() * 4)

    def get(self, idx: torch.Tensor, length: int | None
            ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]:
        """The teacher's outputs for rows ``idx``, its hidden states padded to ``length`` and their mask."""
        out = self.outputs[idx]
        hidden: dict[str, torch.Tensor] = {}
        for p, rows in self.hidden.items():
            parts = [rows[int(i)] for i in idx]
            if self.lengths is not None and length is not None and parts[0].dim() >= 2:
                h = torch.zeros((len(parts), length, *parts[0].shape[1:]), dtype=torch.float32)
                for j, part in enumerate(parts):
                    h[j, : part.shape[0]] = part.float()
            else:
                h = torch.stack([part.float() for part in parts])
            hidden[p] = h
        return out, hidden, length_mask(self.lengths[idx] if self.lengths is not None else None, length)


__all__ = ["TEACHER_CACHE_MAX_BYTES", "Taps", "TeacherCache", "estimate_bytes", "hidden_loss", "length_mask"]
