"""The ``export:`` source's submit check, without torch: the ``.pt2`` archive and its data's tensor names.

What lives here: ``submit_check`` (the archive holds only what ``torch.export.save`` writes for a CPU
program and only pure tensor operators, read by ``pt2_archive.check_archive``; its members pass their
checksums) and ``input_name_problems`` (a tensor data file names each tensor after a forward argument of
the program, plus an optional ``labels``, or ``labels.<output>`` per output of a program with several). What this cannot see (a shape that does not fit) the worker
finds when it loads the program.

``sources.submit.check_ref`` dispatches here for ``export`` refs.

Example:
    >>> from modelpress.optimize.sources import parse_model_ref
    >>> submit_check(parse_model_ref("export:/nope/m.pt2", data={"eval": "/nope/d.npz"}), max_bytes=1 << 30)[0]
    (('model',), 'exported program /nope/m.pt2 does not exist')
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from modelpress.errors import ModelLoadError
from modelpress.optimize.sources.pt2_archive import check_archive
from modelpress.optimize.sources.submit_data import data_problems
from modelpress.optimize.sources.weights_file import safetensors_header

if TYPE_CHECKING:
    from modelpress.optimize.sources.data_checks import Problem
    from modelpress.optimize.sources.ref import ModelRef


def submit_check(ref: "ModelRef", *, max_bytes: int) -> list[Problem]:
    """Every problem of an ``export:`` ref's program and data found without torch, as (field path, message).

    Example:
        >>> from modelpress.optimize.sources import parse_model_ref
        >>> ref = parse_model_ref("export:/nope/m.pt2", data={"eval": "/nope/d.npz"})
        >>> [loc for loc, _ in submit_check(ref, max_bytes=1 << 30)]
        [('model',), ('data', 'eval')]
    """
    problems: list[Problem] = []
    path = Path(ref.path or "")
    inputs: list[str] | None = None
    if not path.is_file():
        problems.append((("model",), f"exported program {path} does not exist"))
    else:
        try:
            inputs = check_archive(path, max_bytes=max_bytes, verify_data=True)
        except ModelLoadError as e:
            problems.append((("model",), str(e)))
    # Input names are checked only against a program that was read, and only on a data file that passed.
    also = (lambda data: input_name_problems(data, inputs)) if inputs else None
    return problems + data_problems(ref, max_bytes=max_bytes, also=also)


def input_name_problems(path: Path, inputs: list[str]) -> list[str]:
    """Tensors by forward argument name: the data's names (besides ``labels``) must be the program's inputs.

    Example:
        >>> input_name_problems(Path("eval.jsonl"), ["features"])  # not a tensor file: nothing to compare
        []
    """
    if path.suffix.lower() == ".safetensors":
        names = {k for k in safetensors_header(path) if k != "__metadata__"}
    elif path.suffix.lower() == ".npz":
        with zipfile.ZipFile(path) as zf:
            names = {n[:-4] for n in zf.namelist()}
    else:
        return []
    names.discard("labels")
    names -= {n for n in names if n.startswith("labels.")}  # per-output labels: the worker matches the outputs
    missing, extra = [n for n in inputs if n not in names], sorted(names - set(inputs))
    if not missing and not extra:
        return []
    return [f"data file {path.name} holds tensors {', '.join(sorted(names)) or '(none)'} but the program's inputs are "
            f"{', '.join(inputs)}" + (f" (missing: {', '.join(missing)})" if missing else "")
            + (f" (not an input: {', '.join(extra)})" if extra else "")
            + "; name each tensor after its forward argument, plus an optional 'labels' "
            "(for a program with several outputs, 'labels.<output>')"]


__all__ = ["input_name_problems", "submit_check"]
