"""Built-in trained weights shipped as package data, and the content id that names them; no torch import.

``digits_cnn``, ``seq_lstm`` and ``seq_gru`` used to train at first use on each worker. Training sums
floats, and how a CPU sums them (AVX2, AVX-512, AMX kernels, the thread count) changes the last bits, which
training then grows (up to 0.12 in an LSTM weight between torch's default and AVX2 kernels), so two workers
of one fleet held different weights under one content id, and a stored result was reused for weights it
never measured (issue 20 item 12). Their state dicts are now trained once by ``tools/train-builtin-weights`` and
shipped in ``modelpress/zoo/data/``; every worker loads the same bytes, and the content id covers
those bytes' sha256, so two sets of weights never share an id.

The seed ``mlp`` ships nothing: its weights were nn.Linear's seeded init, whose bytes also depended on the
CPU's kernels (half of fc1 one float step apart between torch's default and AVX2 kernels), and so were its
``torch.randn`` inputs. ``zoo.models.seeded_linear_init`` and its ``_randn`` now draw both from numpy's PCG64 bit
stream with exact IEEE arithmetic only, the same bytes on every CPU at a fraction of a shipped file's 2.5
MB; the code that draws them is in ``zoo/models.py``, whose sha256 the id's ``code=`` part already covers
(``tests/zoo/test_builtin_weights.py`` pins the bytes under several CPU kernels).

The producer computes the id without importing torch (``api`` and ``intake`` call ``builtin_content_id``
here), and the worker computes the same one for the model it loaded (``RegisteredSource.materialize``).

Example:
    >>> shipped_weights_name("digits_cnn")
    'builtin-digits_cnn-v2.safetensors'
    >>> builtin_content_id("digits_cnn") != builtin_content_id("seq_lstm")
    True
"""

from __future__ import annotations

import hashlib
from importlib import resources
from importlib.metadata import PackageNotFoundError, entry_points, packages_distributions, version
from importlib.resources.abc import Traversable
from importlib.util import find_spec
from pathlib import Path

#: Version of the shipped weight files (the spec versions of these models follow it).
WEIGHTS_VERSION = 2


def shipped_weights_name(spec_name: str) -> str:
    """The package-data file name of a built-in model's shipped weights.

    Example:
        >>> shipped_weights_name("seq_gru")
        'builtin-seq_gru-v2.safetensors'
    """
    return f"builtin-{spec_name}-v{WEIGHTS_VERSION}.safetensors"


#: Factory (``module:attr``, what an entry point names) → its shipped weights file. Keyed by the factory,
#: not the entry-point name: ``digits_cnn`` and ``modelpress.zoo.models:digits_cnn_spec`` are one model.
SHIPPED_WEIGHTS: dict[str, str] = {
    "modelpress.zoo.models:digits_cnn_spec": shipped_weights_name("digits_cnn"),
    "modelpress.zoo.text:seq_lstm_spec": shipped_weights_name("seq_lstm"),
    "modelpress.zoo.text:seq_gru_spec": shipped_weights_name("seq_gru"),
}


def data_dir() -> Traversable:
    """Where the shipped weights live: ``modelpress/zoo/data`` (tests point it elsewhere).

    Example:
        >>> data_dir().joinpath("calib_sentences.txt").is_file()
        True
    """
    # importlib.resources, not __file__: it also finds package data in a wheel or zip install.
    return resources.files("modelpress.zoo").joinpath("data")


def shipped_weights_file(file_name: str) -> Traversable:
    """The shipped weights file ``file_name`` inside ``data_dir()`` (it may not exist).

    Example:
        >>> shipped_weights_file(shipped_weights_name("digits_cnn")).name
        'builtin-digits_cnn-v2.safetensors'
    """
    return data_dir().joinpath(file_name)


def shipped_weights_sha256(file_name: str) -> str | None:
    """sha256 of a shipped weights file, or None when it is missing (a broken install).

    Example:
        >>> len(shipped_weights_sha256(shipped_weights_name("seq_gru")))
        64
    """
    f = shipped_weights_file(file_name)
    if not f.is_file():
        return None
    return hashlib.sha256(f.read_bytes()).hexdigest()


def _factory(name: str) -> tuple[str | None, str]:
    """(owning distribution, ``module:attr``) of a registered name or an allow-listed ``module:attr``."""
    eps = {ep.name: ep for ep in entry_points(group="modelpress.models")}
    if name in eps:
        ep = eps[name]
        return (ep.dist.name if ep.dist is not None else None), ep.value.replace(" ", "")
    if ":" in name:
        owners = packages_distributions().get(name.partition(":")[0].split(".")[0], [])
        return (owners[0] if len(owners) == 1 else None), name
    return None, name


def module_source_file(module: str) -> Path | None:
    """The ``.py`` file of a dotted module, found without importing it (only its top package's spec).

    Example:
        >>> module_source_file("modelpress.zoo.models").name
        'models.py'
    """
    top, *rest = module.split(".")
    try:
        spec = find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if not rest:
        return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    for loc in spec.submodule_search_locations or []:
        base = Path(loc).joinpath(*rest[:-1])
        for candidate in (base / f"{rest[-1]}.py", base / rest[-1] / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def module_source_sha256(module: str) -> str | None:
    """sha256 of a module's source file (``module_source_file``), or None when there is none."""
    path = module_source_file(module)
    if path is None:
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def builtin_content_id(name: str) -> str | None:
    """The content id of a registered model used without a weights file; the producer's and the worker's.

    ``sha256("builtin:<name>:<distribution>==<version>:code=<sha256 of the factory's module file>")``, and
    for a model whose weights ship as package data, ``:weights=<sha256 of that file>`` appended: another
    weights file is another id, wherever it was made. Weights generated by the factory's module (the seed
    mlp's, the same bytes on every CPU) are covered by ``code=``. ``None`` (no dedupe) when no installed distribution
    owns the factory, and for a shipped-weights model whose file is missing (a broken install must not
    share an id with a working one).

    The spec's own ``version`` lives behind a torch import, so the package version and the factory module's
    bytes (read, never imported) stand in for it: a release, or an edited factory in an editable install,
    changes the id (a re-run, never a stale reuse; issue 10 item 6).

    Example:
        >>> builtin_content_id("mlp") != builtin_content_id("digits_cnn")
        True
        >>> builtin_content_id("no_such_model") is None
        True
    """
    dist_name, factory = _factory(name)
    if dist_name is None:
        return None
    try:
        dist_version = version(dist_name)
    except PackageNotFoundError:
        return None
    code = module_source_sha256(factory.partition(":")[0]) or "unknown"
    text = f"builtin:{name}:{dist_name}=={dist_version}:code={code}"
    if factory in SHIPPED_WEIGHTS:
        weights = shipped_weights_sha256(SHIPPED_WEIGHTS[factory])
        if weights is None:
            return None
        text += f":weights={weights}"
    return hashlib.sha256(text.encode()).hexdigest()


__all__ = ["SHIPPED_WEIGHTS", "WEIGHTS_VERSION", "builtin_content_id", "data_dir", "module_source_file",
           "module_source_sha256", "shipped_weights_file",
           "shipped_weights_name", "shipped_weights_sha256"]
