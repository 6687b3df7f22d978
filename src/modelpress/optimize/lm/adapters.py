"""The runtimes a causal LM can be served by, one small adapter each, behind one interface (``LMRuntime``).

An adapter turns the float transformers model into one file quantized by its own toolchain (``build``), and
serves a file back as an ``lm.runner.LMRunner`` (``load``). ``options`` are the data-aware settings worth
building beside plain rounding for a step (each is a candidate, judged on validation text by the job). Adding
a runtime is a class here and a line in ``LM_RUNTIMES``; the job (``lm.job``) never names one.

- ``torch``: ``lm.weight_only`` (group-wise asymmetric int4 through torch's int4 CPU kernel, int8 per row through
  its int8 kernel, both on bf16 activations; for int4 also a clipping search on calibration activations), one
  safetensors file, served by the transformers model with its KV cache (``lm.torch_lm``);
- ``openvino``: ``lm.openvino_lm`` (the model converted with its KV cache), weights compressed by NNCF's
  ``compress_weights`` (``lm.openvino_compress``, AWQ and scale estimation among its options), one ``.ovz`` file.

Example:
    >>> sorted(LM_RUNTIMES)
    ['openvino', 'torch']
    >>> get_lm_runtime("torch").suffix
    '.safetensors'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence

from modelpress.errors import UserInputError


class LMRuntime(Protocol):
    """One runtime's causal-LM adapter."""

    name: str
    suffix: str

    def unavailable(self) -> str | None:
        """None when this host can build and serve the runtime's files, else why not (a sentence)."""
        ...

    def versions(self) -> dict[str, str]:
        ...

    def options(self, cfg: Any) -> list[dict[str, Any]]:
        """Settings to build as separate candidates for the step ``cfg`` (``[{}]``: plain rounding only)."""
        ...

    def build(self, model: Any, cfg: Any, option: dict[str, Any], calibration: Sequence[Any], workdir: Path
              ) -> tuple[Path, dict[str, Any]]:
        """The quantized file (one file, in ``workdir``) and what was done (JSON-able); ``model`` is not changed."""
        ...

    def load(self, path: Path, threads: int) -> Any:
        """An ``LMRunner`` serving the file with ``threads`` threads."""
        ...


def _data_aware(cfg: Any, offered: tuple[str, ...]) -> list[dict[str, Any]]:
    """Plain rounding, then each data-aware option the step allows among ``offered``, then all of them together."""
    wanted = offered if cfg.data_aware is None else tuple(o for o in cfg.data_aware if o in offered)
    opts: list[dict[str, Any]] = [{}] + [{o: True} for o in wanted]
    if len(wanted) > 1:
        opts.append({o: True for o in wanted})
    return opts


#: Calibration blocks the torch clipping search runs the float model on.
CLIP_ROWS = 16


class TorchLMRuntime:
    """Weight-only int8/int4 in torch (``lm.weight_only``), served by transformers with its KV cache."""

    name = "torch"
    suffix = ".safetensors"

    def unavailable(self) -> str | None:
        return None

    def versions(self) -> dict[str, str]:
        import torch
        import transformers

        return {"torch": torch.__version__, "transformers": transformers.__version__}

    def options(self, cfg: Any) -> list[dict[str, Any]]:
        # The clipping search trades a group's extremes for resolution: it matters at 4 bits, hardly at 8.
        return _data_aware(cfg, ("clip_search",)) if cfg.bits == 4 else [{}]

    def build(self, model: Any, cfg: Any, option: dict[str, Any], calibration: Sequence[Any], workdir: Path
              ) -> tuple[Path, dict[str, Any]]:
        import torch

        from modelpress.optimize.lm.weight_only import quantize_lm, save_quantized

        workdir.mkdir(parents=True, exist_ok=True)
        calib = None
        if option.get("clip_search"):
            # Unpadded rows of one length (the full calibration blocks): the activations the clipping is fit to.
            full = [r for r in calibration if len(r) == max(len(c) for c in calibration)][:CLIP_ROWS]
            calib = torch.stack(list(full)) if full else None
        q, meta = quantize_lm(model, bits=cfg.bits, group_size=cfg.group_size, embedding=cfg.embedding,
                              lm_head=cfg.lm_head, calibration=calib)
        path = workdir / f"model{self.suffix}"
        save_quantized(q, meta, path)
        return path, _jsonable(meta)

    def load(self, path: Path, threads: int) -> Any:
        from modelpress.optimize.lm.torch_lm import TorchLM
        from modelpress.optimize.lm.weight_only import load_quantized

        return TorchLM(load_quantized(path))  # torch threads are the job's (set once per process)


class OpenVinoLMRuntime:
    """NNCF ``compress_weights`` on the model converted with its KV cache (``lm.openvino_lm``)."""

    name = "openvino"
    suffix = ".ovz"

    def unavailable(self) -> str | None:
        try:
            import nncf  # noqa: F401
            import openvino  # noqa: F401
        except Exception as e:  # noqa: BLE001 - any import failure means: not on this host
            return f"openvino/nncf cannot be imported ({type(e).__name__}: {e}); pip install 'modelpress[openvino]'"
        return None

    def versions(self) -> dict[str, str]:
        from importlib.metadata import version

        try:
            return {"openvino": version("openvino"), "nncf": version("nncf")}
        except Exception as e:  # noqa: BLE001
            return {"unavailable": str(e)}

    def options(self, cfg: Any) -> list[dict[str, Any]]:
        # NNCF's AWQ and scale estimation act on int4 groups; for int8 they have nothing to choose.
        return _data_aware(cfg, ("awq", "scale_estimation")) if cfg.bits == 4 else [{}]

    def build(self, model: Any, cfg: Any, option: dict[str, Any], calibration: Sequence[Any], workdir: Path
              ) -> tuple[Path, dict[str, Any]]:
        from modelpress.optimize.lm.openvino_compress import compress_lm
        from modelpress.optimize.lm.openvino_lm import export_lm, save_lm

        if cfg.embedding == "float" or cfg.lm_head == "float":
            raise UserInputError("runtime 'openvino': NNCF compresses the embedding and the LM head with the rest "
                                 "(int8 at least); use embedding: int8 and lm_head: int8 or same")
        workdir.mkdir(parents=True, exist_ok=True)
        ov_model = export_lm(model, workdir)
        mode = ("int4_asym" if cfg.bits == 4 else "int8_asym")
        ov_q, meta = compress_lm(ov_model, mode=mode, group_size=cfg.group_size if cfg.bits == 4 else None,
                                 all_layers=True if (cfg.lm_head == "same" and cfg.bits == 4) else None,
                                 calibration=list(calibration) if option else None,
                                 awq=bool(option.get("awq")), scale_estimation=bool(option.get("scale_estimation")))
        path = workdir / f"model{self.suffix}"
        save_lm(ov_q, path, meta)
        return path, _jsonable(meta)

    def load(self, path: Path, threads: int) -> Any:
        from modelpress.optimize.lm.openvino_lm import load_lm

        return load_lm(path, threads)


def _jsonable(x: Any) -> Any:
    import json

    return json.loads(json.dumps(x, default=str))


#: The runtimes serving causal LMs, by name; ``auto`` builds each in this order.
LM_RUNTIMES: dict[str, LMRuntime] = {"torch": TorchLMRuntime(), "openvino": OpenVinoLMRuntime()}


def lm_runtime_for_path(path: str | Path) -> LMRuntime | None:
    """The LM adapter that wrote ``path``, or None when it is not a causal LM's artifact (``modelpress.load``).

    A torch LM artifact is a ``.safetensors`` file (no other artifact is); an OpenVINO one is an ``.ovz`` whose
    metadata's ``detail`` says ``kind: causal_lm`` (``lm.openvino_lm.save_lm``).

    Example:
        >>> lm_runtime_for_path("model.onnx") is None
        True
    """
    import json
    import zipfile

    p = Path(path)
    if p.suffix == TorchLMRuntime.suffix:
        return LM_RUNTIMES["torch"]
    if p.suffix == OpenVinoLMRuntime.suffix and p.is_file():
        try:
            with zipfile.ZipFile(p) as z:
                meta = json.loads(z.read("modelpress.json"))
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            return None
        if isinstance(meta, dict) and isinstance(meta.get("detail"), dict) and meta["detail"].get("kind") == "causal_lm":
            return LM_RUNTIMES["openvino"]
    return None


def get_lm_runtime(name: str) -> LMRuntime:
    """The adapter registered as ``name``; ``UserInputError`` naming the others when there is none."""
    try:
        return LM_RUNTIMES[name]
    except KeyError:
        raise UserInputError(f"runtime {name!r} does not serve causal LMs; known: {', '.join(LM_RUNTIMES)}") from None


__all__ = ["LMRuntime", "LM_RUNTIMES", "OpenVinoLMRuntime", "TorchLMRuntime", "get_lm_runtime", "lm_runtime_for_path"]
