"""The step registry has no import circle with the technique modules."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["quantization", "pruning", "distillation"])
def test_a_technique_module_imports_alone_without_importing_steps(module: str) -> None:
    code = (f"import sys, modelpress.optimize.{module}; "
            "assert 'modelpress.optimize.steps' not in sys.modules, 'technique imported steps'; "
            "from modelpress.optimize.step_registry import handler_for; "
            "from modelpress.optimize.recipes import StaticQuantConfig; "
            "print(type(handler_for(StaticQuantConfig())).__name__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().endswith("StaticQuantHandler")


def test_steps_registers_every_built_in_step() -> None:
    from modelpress.optimize.recipes import _STEP_TYPES
    from modelpress.optimize.steps import handlers

    assert set(_STEP_TYPES.values()) <= set(handlers())
