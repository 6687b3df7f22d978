"""CLI subcommands beyond the core ones in ``modelpress.cli``, one module per area.

Each module exposes ``add_commands(subparsers)`` and must not import torch at module level.
"""

COMMAND_MODULES = (
    "modelpress.commands.batches",      # manifests, batches, wait --batch, report
    "modelpress.commands.ops",          # beat, flower, nightly
    "modelpress.commands.maintenance",  # reconcile and other repair tools
)
