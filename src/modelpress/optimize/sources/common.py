"""Pieces the user-model sources share: latency inputs cut from real rows, weights read safely.

Example:
    >>> import torch
    >>> make = tiled_input((torch.arange(6.0).reshape(3, 2),))
    >>> make(5).shape
    torch.Size([5, 2])
"""

from __future__ import annotations

from typing import Callable

import torch

from modelpress.optimize.zoo import Inputs


def tiled_input(rows: Inputs) -> Callable[[int], Inputs]:
    """``make_input(b)``: the first ``b`` rows of real data, cycled when there are fewer than ``b``.

    Latency is measured on the user's own inputs (shapes and, for text, padding as deployed).
    """
    t = rows if isinstance(rows, tuple) else (rows,)
    n = int(t[0].shape[0])

    def make(b: int) -> Inputs:
        idx = torch.arange(b) % n
        out = tuple(x.index_select(0, idx).contiguous() for x in t)
        return out[0] if len(out) == 1 else out

    return make

