"""Before transformers is imported: no hub access at all, and torchvision importable beside the CPU torch.

Offline is forced, not defaulted: a worker's environment (an operator's ``HF_HUB_OFFLINE=0``, a shell
profile) must not let a user's folder make transformers download a config, a tokenizer, a kernel or code.
``HUB_ENV`` is written over whatever was set, and when ``huggingface_hub`` was imported earlier (timm
imports it; it reads ``HF_HUB_OFFLINE`` once, at import) its module constants are set too, since
transformers asks ``huggingface_hub.constants.is_offline_mode()``. ``USE_HUB_KERNELS=0`` stops
transformers from "kernelizing" a loaded model with layers from the hub (on by default when the
``kernels`` package is installed, as it is here).

transformers imports torchvision when it is installed, and the registry's torchvision 0.28.0 (the
release made for torch 2.13.0) is a CUDA build whose compiled ops cannot load beside the CPU torch:
the import then fails inside transformers ("operator torchvision::nms does not exist"), which hides
as "Could not import module 'BertModel'". ``sources.vision.import_torchvision`` declares the two op
schemas first. Every transformers import in modelpress goes through ``prepare_transformers()``.

Example:
    >>> import os; os.environ["HF_HUB_OFFLINE"] = "0"
    >>> prepare_transformers()
    >>> os.environ["HF_HUB_OFFLINE"], os.environ["USE_HUB_KERNELS"]
    ('1', '0')
"""

from __future__ import annotations

import importlib.util
import os
import sys

HUB_ENV = {
    "HF_HUB_OFFLINE": "1",            # huggingface_hub: every HTTP request raises
    "TRANSFORMERS_OFFLINE": "1",      # transformers' own spelling of the same
    "HF_DATASETS_OFFLINE": "1",       # datasets, should anything import it
    "HF_HUB_DISABLE_TELEMETRY": "1",  # no usage pings
    "DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",  # never send an operator's token along
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    "USE_HUB_KERNELS": "0",           # transformers: no layers swapped for hub kernels
}


def force_offline() -> None:
    """Write ``HUB_ENV`` into the environment (over any value) and into an already-imported hub client.

    Example:
        >>> force_offline(); import os; os.environ["TRANSFORMERS_OFFLINE"]
        '1'
    """
    os.environ.update(HUB_ENV)
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        for name in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "HF_HUB_DISABLE_IMPLICIT_TOKEN",
                     "HF_HUB_DISABLE_UPDATE_CHECK"):
            setattr(constants, name, True)


def prepare_transformers() -> None:
    """Never let transformers or the hub reach the network; make its torchvision import succeed."""
    force_offline()
    if importlib.util.find_spec("torchvision") is None:
        return  # no torchvision: transformers does without it
    from modelpress.optimize.sources.vision import import_torchvision

    import_torchvision()


__all__ = ["HUB_ENV", "force_offline", "prepare_transformers"]
