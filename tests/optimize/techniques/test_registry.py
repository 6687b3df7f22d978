"""The step registry has no import circle with the technique modules."""

from __future__ import annotations

import subprocess
import sys

import pytest

TECHNIQUES = ("quantization", "pruning", "distillation", "sensitivity", "training", "transformer_pruning",
              "transformer_graph", "prune_level", "distill_float")


@pytest.mark.parametrize("module", ["quantization", "pruning", "distillation", "transformer_pruning", "distill_float",
                                    "prune_level"])
def test_a_technique_module_imported_alone_finds_every_handler_registered(module: str) -> None:
    code = (f"import sys, modelpress.optimize.techniques.{module}; "
            "from modelpress.optimize.techniques.registry import handler_for; "
            "from modelpress.optimize.recipes import StaticQuantConfig; "
            "print(type(handler_for(StaticQuantConfig())).__name__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().endswith("StaticQuantHandler")


def test_the_registry_imports_no_technique_module() -> None:
    # Load the registry without its package __init__ (which imports the techniques on purpose): nothing it
    # imports may pull a technique module in, or the circle registry ↔ techniques is back.
    code = ("import sys, types, importlib, modelpress.optimize as o; "
            "pkg = types.ModuleType('modelpress.optimize.techniques'); "
            "pkg.__path__ = [o.__path__[0] + '/techniques']; "
            "sys.modules[pkg.__name__] = pkg; "
            "importlib.import_module('modelpress.optimize.techniques.registry'); "
            "print(sorted(m for m in sys.modules "
            f"if m.startswith('modelpress.') and m.rsplit('.', 1)[-1] in {TECHNIQUES!r}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"


def test_the_registry_registers_every_built_in_step() -> None:
    from modelpress.optimize.recipes import step_types
    from modelpress.optimize.techniques.registry import handlers

    assert set(step_types().values()) <= set(handlers())
