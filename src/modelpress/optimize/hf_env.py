"""Before transformers is imported: offline, and torchvision importable beside the CPU torch.

transformers imports torchvision when it is installed, and the registry's torchvision 0.28.0 (the
release made for torch 2.13.0) is a CUDA build whose compiled ops cannot load beside the CPU torch:
the import then fails inside transformers ("operator torchvision::nms does not exist"), which hides
as "Could not import module 'BertModel'". ``sources.vision.import_torchvision`` declares the two op
schemas first. Every transformers import in modelpress goes through ``prepare_transformers()``.

Example:
    >>> prepare_transformers()
    >>> import os; os.environ["HF_HUB_OFFLINE"]
    '1'
"""

from __future__ import annotations

import importlib.util
import os


def prepare_transformers() -> None:
    """Never let transformers or the hub reach the network; make its torchvision import succeed."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if importlib.util.find_spec("torchvision") is None:
        return  # no torchvision: transformers does without it
    from modelpress.optimize.sources.vision import import_torchvision

    import_torchvision()


__all__ = ["prepare_transformers"]
