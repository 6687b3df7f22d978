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

from modelpress.optimize.limits import check_batch_bytes, check_latency_batches, current_limits
from modelpress.optimize.spec import Inputs


def tiled_input(rows: Inputs) -> Callable[[int], Inputs]:
    """``make_input(b)``: the first ``b`` rows of real data, cycled when there are fewer than ``b``.

    Latency is measured on the user's own inputs (shapes and, for text, padding as deployed). Rows are
    copied to fill the batch, so a few large rows make a batch of any size: each ``b`` is checked against
    ``max_latency_batch`` and ``b`` × bytes per row against ``max_latency_batch_bytes`` before copying.

    Example:
        >>> make = tiled_input((torch.zeros(2, 1024**2),))  # 4 MiB rows
        >>> make(1024)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        modelpress.errors.DataError: latency batch: 1,024 rows x 4,194,304 bytes per row = ...
    """
    t = rows if isinstance(rows, tuple) else (rows,)
    n = int(t[0].shape[0])
    row_bytes = sum(x[:1].numel() * x.element_size() for x in t)

    def make(b: int) -> Inputs:
        limits = current_limits()
        check_latency_batches((b,), limits)
        check_batch_bytes(b, row_bytes, "latency batch", limits)
        idx = torch.arange(b) % n
        out = tuple(x.index_select(0, idx).contiguous() for x in t)
        return out[0] if len(out) == 1 else out

    return make
