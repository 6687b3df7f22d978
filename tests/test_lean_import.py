"""The producer side (CLI, API, Celery app, task module) never imports torch."""

from __future__ import annotations

import subprocess
import sys


def test_cli_api_and_worker_modules_import_without_torch():
    code = ("import sys, modelpress, modelpress.cli, modelpress.api, modelpress.workers, "
            "modelpress.tasks.optimize_job, modelpress.optimize.recipes; "
            "modelpress.cli.build_parser(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_every_built_in_recipe_is_known_to_a_producer_that_never_imports_torch():
    code = ("import sys; from modelpress.optimize.recipes import BUILTIN_RECIPES as B; before = sorted(B); "
            "assert 'torch' not in sys.modules; import modelpress.optimize.techniques; print(before == sorted(B))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "True"
