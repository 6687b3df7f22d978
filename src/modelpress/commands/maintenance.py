"""Repair tools: ``modelpress reconcile`` (see ``modelpress.reconcile``). No torch import.

Example:
    $ modelpress reconcile
    requeued 1 job(s) of lost workers, re-published 0 lost message(s), failed 0 poison and 0 unroutable job(s); ...
    $ modelpress reconcile --json --grace 60
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelpress.settings import Settings


def cmd_reconcile(args: argparse.Namespace, settings: "Settings") -> int:
    """Run one reconciliation pass now and print what it did (exit 0; 1 if the broker was unreachable).

    Example:
        $ modelpress reconcile --json
        {"requeued_stale": [], "republished": ["6b69…"], "failed_poison": [], ...}
    """
    from modelpress.commands.common import ensure_db
    from modelpress.reconcile import reconcile_once

    if args.grace is not None:
        settings = settings.model_copy(update={"reconcile_queued_grace": args.grace})
    ensure_db(settings)
    summary = reconcile_once(settings)
    print(json.dumps(summary.to_dict(), indent=1) if args.json else summary)
    return 0 if summary.broker_reachable else 1


def add_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register this module's subcommands on the ``modelpress`` parser."""
    r = sub.add_parser(
        "reconcile",
        help="requeue jobs of lost workers, re-publish lost messages, fail jobs that used up their attempts",
        description="One pass of the reconciler (beat runs it every MODELPRESS_RECONCILE_INTERVAL seconds and "
                    "every worker at start). Safe to run at any time, alongside everything else.")
    r.add_argument("--json", action="store_true", help="print the job ids acted on, as JSON")
    r.add_argument("--grace", type=float, help="seconds a queued job waits before its message is presumed lost "
                                                "(default MODELPRESS_RECONCILE_QUEUED_GRACE)")
    r.set_defaults(func=cmd_reconcile)
