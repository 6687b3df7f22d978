"""The registered source's submit check for a factory given with data: its weights file and its data files.

What lives here: ``submit_check`` for a registered model (an entry point or an allow-listed
``module:function``) that comes with its own data. The factory's name is the producer's check
(``api.check_model_name``: the allow-list is a deployment setting); this checks only files, without torch.

``sources.submit.check_ref`` dispatches here for ``registered`` refs.

Example:
    >>> from modelpress.optimize.sources import parse_model_ref
    >>> submit_check(parse_model_ref("mlp", weights="/nope.pt", data={"eval": "/nope.npz"}), max_bytes=1 << 30)
    [(('weights',), 'weights file /nope.pt does not exist'), (('data', 'eval'), 'data file /nope.npz does not exist')]
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from modelpress.optimize.sources.submit_data import data_problems
from modelpress.optimize.sources.weights_file import weights_file_problems

if TYPE_CHECKING:
    from modelpress.optimize.sources.data_checks import Problem
    from modelpress.optimize.sources.ref import ModelRef


def submit_check(ref: "ModelRef", *, max_bytes: int) -> list[Problem]:
    """The weights file's problems (when one is given), then the data files', as (field path, message).

    Example:
        >>> from modelpress.optimize.sources import parse_model_ref
        >>> submit_check(parse_model_ref("mlp", data={"eval": "/nope.npz"}), max_bytes=1 << 30)[0][0]
        ('data', 'eval')
    """
    problems: list[Problem] = []
    if ref.weights:
        problems += [(("weights",), m) for m in weights_file_problems(Path(ref.weights), max_bytes=max_bytes)]
    return problems + data_problems(ref, max_bytes=max_bytes)


__all__ = ["submit_check"]
