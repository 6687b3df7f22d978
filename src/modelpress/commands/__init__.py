"""CLI subcommands beyond the core ones in ``modelpress.cli``, one module per area.

What lives here: ``common`` (what ``cli`` and the command modules share: database set-up, the
embedded-broker check), ``batches`` (manifests, batches, ``wait --batch``, ``report``), ``ops`` (beat,
Flower, the ops worker, nightly) and ``maintenance`` (reconcile and other repair tools). Each command
module exposes ``add_commands(subparsers)``; ``cli`` loads them from ``COMMAND_MODULES``.

What it may import: the libraries behind the commands (``api``, ``models_db``, ``report``, ``nightly``,
``reconcile``, ``settings``, ``errors``, ``worker_store``, ``workers``, ``tasks.registry``,
``optimize.recipes``, ``zoo``) and ``commands.common``. Never ``modelpress.cli``: it imports this
package, so ``commands`` sits below it. Torch never at module level: only ``report --zoo`` imports it,
inside the command.
"""

COMMAND_MODULES = (
    "modelpress.commands.batches",      # manifests, batches, wait --batch, report
    "modelpress.commands.ops",          # beat, flower, nightly
    "modelpress.commands.maintenance",  # reconcile and other repair tools
)
