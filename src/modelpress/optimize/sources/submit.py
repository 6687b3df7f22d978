"""Submit-time checks of a model reference, torch-free: which source checks which kind, and what all share.

What lives here: ``SUBMIT_CHECKS`` (ref kind → that source's ``submit_check``, one module per source:
``submit_hf``, ``submit_vision``, ``submit_export``, ``submit_registered``), ``check_ref`` (the kind's
check, then the decoded-size limits every kind shares, ``data_checks.decoded_size_problems``) and
``step_problems`` (the recipe steps a kind of model cannot take, or cannot take without a training file). The producer runs both before any row
exists (``api.Producer.model_ref`` / ``validate``); each problem names its field, so a manifest can point
at its line.

Nothing here or in the modules it names imports torch, transformers or torchvision: submitting stays
cheap (``tests/test_lean_import.py``). What a check here cannot see, the worker finds when it loads the
model (``ModelSource.check`` and ``load``), and the job fails naming it.

Example:
    >>> from modelpress.optimize.sources import parse_model_ref
    >>> ref = parse_model_ref("torchvision:resnet9000", weights="w.safetensors", data={"eval": "imgs"})
    >>> [msg for _, msg in check_ref(ref, max_bytes=1 << 30)][0]  # doctest: +ELLIPSIS
    "unknown torchvision model 'resnet9000'..."
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from modelpress.optimize.sources import submit_export, submit_hf, submit_registered, submit_vision
from modelpress.optimize.sources.data_checks import decoded_size_problems
from modelpress.optimize.sources.ref import unsupported_reason

if TYPE_CHECKING:
    from modelpress.optimize.recipes import Recipe
    from modelpress.optimize.sources.data_checks import Problem
    from modelpress.optimize.sources.ref import ModelRef

#: Ref kind → its source's submit check, ``(ref, *, max_bytes) -> [(field path, message), ...]``.
SUBMIT_CHECKS: dict[str, Callable[..., list["Problem"]]] = {
    "registered": submit_registered.submit_check,
    "hf": submit_hf.submit_check,
    "torchvision": submit_vision.submit_check,
    "timm": submit_vision.submit_check,
    "export": submit_export.submit_check,
}


def check_ref(ref: "ModelRef", *, max_bytes: int) -> list[Problem]:
    """Every problem in the ref's files found without torch, as (field path, message); empty when fine.

    ``max_bytes`` bounds each file and each folder (``MODELPRESS_MAX_WEIGHTS_BYTES``). Recipes are
    checked separately (``step_problems``): a manifest runs each model with several.

    Example:
        >>> from modelpress.optimize.sources import parse_model_ref
        >>> check_ref(parse_model_ref("export:/nope/m.pt2", data={"eval": "/nope/d.npz"}), max_bytes=1 << 30)[0]
        (('model',), 'exported program /nope/m.pt2 does not exist')
    """
    problems = SUBMIT_CHECKS[ref.kind](ref, max_bytes=max_bytes)
    problems += decoded_size_problems(ref)  # crop, max_length, latency batches: limits every kind shares
    return list(dict.fromkeys(problems))  # one message once, though two checks may find it


def step_problems(ref: "ModelRef", recipe: "Recipe") -> list[Problem]:
    """The recipe's steps that cannot run on this model, with the reason (torch-free); training steps run on a
    user's model only when its ref has ``data.train``.

    Example:
        >>> from modelpress.optimize.recipes import resolve_recipe
        >>> from modelpress.optimize.sources import parse_model_ref
        >>> ref = parse_model_ref("export:m.pt2", data={"eval": "d.npz"})
        >>> step_problems(ref, resolve_recipe("prune50-finetune"))[0][1][:40]
        "recipe 'prune50-finetune': step 'prune_s"
    """
    problems = [(("recipes",), f"recipe {recipe.name!r}: {why}") for step in recipe.steps
                if (why := unsupported_reason(ref.kind, step.type, has_train=ref.has_train))]
    return problems + [(("recipes",), f"recipe {recipe.name!r}: {why}") for why in _lm_step_problems(ref, recipe)]


#: The one step a causal LM takes (``optimize.lm.job``), and the one only a causal LM takes.
LM_STEPS = ("quantize_weight_only",)


def _lm_step_problems(ref: "ModelRef", recipe: "Recipe") -> list[str]:
    """A causal LM (an ``hf:`` folder whose config names a ``*ForCausalLM``) takes weight-only quantization and
    nothing else yet; weight-only quantization is for causal LMs only (its decode speed is what it is for)."""
    from modelpress.optimize.sources.hf_files import check_folder
    from modelpress.optimize.sources.hf_tasks import hf_task

    config = check_folder(ref.path).config if ref.kind == "hf" and ref.path else None
    causal = config is not None and hf_task(config) == "causal-lm"
    steps = [s.type for s in recipe.steps]
    if causal:
        other = [t for t in steps if t not in LM_STEPS]
        if other or not steps:
            return [f"a causal LM takes step 'quantize_weight_only' only (recipes int8-weight-only, int4-weight-only), "
                    f"and this recipe has {', '.join(repr(t) for t in other) or 'no step'}"]
        return []
    if any(t in LM_STEPS for t in steps):
        return ["step 'quantize_weight_only' is for causal LMs (an hf: folder whose architecture is *ForCausalLM or "
                "*LMHeadModel); use quantize_dynamic or quantize_static for this model"]
    return []


__all__ = ["SUBMIT_CHECKS", "check_ref", "step_problems"]
