"""Test-only: put this folder on a worker's PYTHONPATH and name modules in ``MP_TEST_IMPORTS`` (comma-separated).

Each worker child then imports them when it starts (Celery's ``worker_process_init``), so it knows a test-only
step type (``tests.progress_step``) before it parses a recipe naming it; the factory allow-list cannot do
that, because a job parses its recipe before it imports the model's module. Imported in the children, not
the parent: the parent must not import torch (field notes, "Celery + torch"). Nothing in ``src`` reads
this variable.
"""

import importlib
import os

_MODULES = [m.strip() for m in os.environ.get("MP_TEST_IMPORTS", "").split(",") if m.strip()]

if _MODULES:
    from celery.signals import worker_process_init

    def _import_test_modules(**_: object) -> None:
        for name in _MODULES:
            importlib.import_module(name)

    worker_process_init.connect(_import_test_modules, weak=False)
