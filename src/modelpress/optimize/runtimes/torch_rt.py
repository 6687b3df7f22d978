"""The torch runtime: the torch.ao path behind the runtime interface; the artifact stays a ``.mpz``.

``export`` keeps the (float, eval-mode) module itself; ``quantize`` applies the recipe's quantization step
through its registered step handler (torch.ao dynamic / FX static / QAT), as in every other torch build;
``build_recipe`` builds a recipe that names torch whole (every step in the recipe's order, with the
budget's measured-sensitivity fallback: ``torch_recipe``); ``save`` writes the usual ``.mpz`` (state dict
+ manifest, rebuilt from the registered factory when loaded). A torch artifact therefore needs modelpress
and the model factory on the serving host — unlike the ONNX and OpenVINO ones.

Example:
    >>> TorchRuntime().is_available() is None
    True
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from modelpress.optimize.runtimes.base import Exported
from modelpress.optimize.runtimes.torch_handle import TorchHandle


class TorchRuntime:
    """torch eager/FX with torch.ao int8 kernels (the engine is the job's target backend)."""

    name = "torch"
    suffix = ".mpz"

    def is_available(self) -> str | None:
        return None  # modelpress cannot run without torch

    def build_recipe(self, plan: Any, extra: dict[str, Any]) -> dict[str, Any]:
        """Build a recipe naming torch whole: every step on torch, in the recipe's order (``torch_recipe``).

        ONNX Runtime and OpenVINO quantize an exported float model, so their quantization step must come
        last; torch runs every step itself, so a recipe naming it is one candidate built here.
        """
        from modelpress.optimize.runtimes.torch_recipe import build_torch_recipe

        return build_torch_recipe(plan, extra)

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__}

    def export(self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...], input_names: Sequence[str],
               workdir: Path) -> Exported:
        m = copy.deepcopy(model).eval()
        return Exported(runtime=self.name, handle=TorchHandle(m), input_names=list(input_names))

    def quantize(self, exported: Exported, qcfg: Any, calib: Sequence[tuple[torch.Tensor, ...]],
                 keep_float: Sequence[str], workdir: Path, tuning: Mapping[str, Any] | None = None) -> Exported:
        from modelpress.optimize.techniques.registry import apply_step

        h: TorchHandle = exported.handle
        cfg = qcfg.model_copy(update={"keep_float": tuple(keep_float)}) if hasattr(qcfg, "keep_float") else qcfg
        ctx = h.context if h.context is not None else _minimal_context(h.module, calib)
        if calib and ctx.data.calib_inputs is not None:
            # The handler calibrates on ctx.data.calib_inputs: make those exactly the batches given here.
            ctx = dataclasses.replace(ctx, data=dataclasses.replace(ctx.data, calib_inputs=_stack(calib)))
        from modelpress.optimize.backends import quantized_engine

        with quantized_engine(ctx.engine):
            out = apply_step(h.module, cfg, ctx)
        meta = dict(out.meta)
        handle = TorchHandle(out.model, h.steps + [cfg.to_dict()], h.steps_meta + [meta], h.manifest, h.context)
        return Exported(runtime=self.name, handle=handle, input_names=exported.input_names, quantized=True,
                        meta={"step": cfg.type, "quantized_layers": meta.get("quantized_modules", []),
                              "float_layers": list(keep_float), "engine": ctx.engine})

    def tunings(self, exported: Exported, qcfg: Any) -> list[dict[str, Any]]:
        """None worth trying: the recipe's step already names this toolchain's settings."""
        return []

    def variants(self, qcfg: Any) -> list[dict[str, Any]]:
        """None: torch.ao's per-channel, as the torch path always built (``per_channel_weights``)."""
        return []

    def layers(self, exported: Exported) -> list[str]:
        types = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.LSTM, nn.GRU)
        return [n for n, m in exported.handle.module.named_modules() if isinstance(m, types)]

    def save(self, exported: Exported, path: Path) -> int:
        from modelpress.optimize.artifacts import save_artifact

        h: TorchHandle = exported.handle
        manifest = {**h.manifest, "runtime": self.name, "runtime_versions": self.versions(),
                    "input_names": exported.input_names,
                    "recipe": {**h.manifest.get("recipe", {}), "steps": h.steps}, "steps_meta": h.steps_meta}
        return save_artifact(Path(path), h.module, manifest)

    def load(self, path: Path, threads: int) -> Callable[..., torch.Tensor]:
        from modelpress.optimize.artifacts import load_artifact

        torch.set_num_threads(threads)
        return load_artifact(path).model


def _stack(calib: Sequence[tuple[torch.Tensor, ...]]) -> Any:
    cols = tuple(torch.cat([b[i] for b in calib]) for i in range(len(calib[0])))
    return cols[0] if len(cols) == 1 else cols


def _minimal_context(model: nn.Module, calib: Sequence[tuple[torch.Tensor, ...]]) -> Any:
    # For callers outside the pipeline (tests, benchmarks): a spec-less context whose only data is calibration.
    from modelpress.optimize.techniques.registry import StepContext
    from modelpress.optimize.spec import ModelSpec, TaskData

    x = _stack(calib)
    data = TaskData(eval_inputs=x, eval_labels=None, calib_inputs=x, description="calibration only")
    spec = ModelSpec(name="runtime-model", version=1, build=lambda: model, data=lambda: data,
                     metric="top1_agreement", make_input=lambda b: x[:b] if isinstance(x, torch.Tensor)
                     else tuple(t[:b] for t in x))
    return StepContext(spec=spec, data=data, engine=torch.backends.quantized.engine)
