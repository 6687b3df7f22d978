"""Operations: ``beat``, ``ops-worker``, ``flower`` and ``nightly run-now`` (docs/operations.md).

Example:
    $ modelpress beat                      # the scheduler (one leader; more are standbys)
    $ modelpress ops-worker                # runs what beat schedules on the ops queue (nightly submission)
    $ MODELPRESS_FLOWER_BASIC_AUTH="ops:$FLOWER_PASSWORD" modelpress flower --address 0.0.0.0
    $ modelpress nightly run-now           # submit tonight's jobs now (a no-op if already submitted)
"""

from __future__ import annotations

import argparse
import os
import sys

from modelpress.commands.common import EXAMPLE_PASSWORDS_HELP
from modelpress.settings import Settings


def _check_plan(settings: Settings) -> str | None:
    """The reason tonight's plan is invalid (unknown model, broken recipe), or None."""
    from modelpress.nightly import night_plan
    from modelpress.errors import UserInputError

    try:
        night_plan(settings)
    except UserInputError as e:
        return f"the nightly plan is invalid (MODELPRESS_NIGHTLY_*): {e}"
    return None


def cmd_beat(args: argparse.Namespace, settings: Settings) -> int:
    from modelpress.commands.common import ensure_db, refuse_or_warn
    from modelpress.workers.beat import run_beat

    # Fail at start, not at 2 a.m.: a typo in the night's models or recipes stops beat here.
    problem = _check_plan(settings) if settings.nightly_schedule else None
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    refused = refuse_or_warn(settings, "beat", embedded=args.embedded,
                             allow_example_passwords=args.allow_example_passwords)
    if refused is not None:
        return refused
    ensure_db(settings)
    run_beat(settings, loglevel=args.loglevel)
    return 0


def cmd_ops_worker(args: argparse.Namespace, settings: Settings) -> int:
    from modelpress.commands.common import ensure_db, refuse_or_warn
    from modelpress.workers.routing import OPS_QUEUE
    from modelpress.tasks.registry import make_worker_app

    refused = refuse_or_warn(settings, "ops-worker", embedded=args.embedded,
                             allow_example_passwords=args.allow_example_passwords)
    if refused is not None:
        return refused

    ensure_db(settings)
    app = make_worker_app(settings)
    # No configure_worker(): these tasks never import torch, so children need no torch set-up.
    app.worker_main(argv=["worker", "-Q", OPS_QUEUE, "-c", str(args.concurrency), "-n", f"ops-{os.getpid()}@%h",
                          "-l", args.loglevel, "-P", "prefork", "-E"])
    return 0


def cmd_flower(args: argparse.Namespace, settings: Settings) -> int:
    from modelpress.workers.flower import FlowerConfigError, check_example_passwords, run_flower

    try:
        check_example_passwords(settings, allow=args.allow_example_passwords)
        return run_flower(settings, address=args.address or settings.flower_address,
                          port=args.port or settings.flower_port, insecure_localhost=args.insecure_localhost)
    except FlowerConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def cmd_nightly_run_now(args: argparse.Namespace, settings: Settings) -> int:
    from modelpress.commands.common import ensure_db
    from modelpress.nightly import submit_night
    from modelpress.workers.app import make_app

    problem = _check_plan(settings)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    ensure_db(settings)
    print(submit_night(settings, app=make_app(settings), night=args.night))
    return 0


def _night(text: str) -> str:
    from datetime import datetime

    try:
        datetime.strptime(text, "%Y-%m-%d")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2025-01-31") from None
    return text


_EMBEDDED_HELP = ("allow the embedded broker and database (one machine) when MODELPRESS_BROKER_URL / "
                  "MODELPRESS_DATABASE_URL are not set")


def add_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``beat``, ``ops-worker``, ``flower`` and ``nightly`` on the ``modelpress`` parser."""
    b = sub.add_parser("beat", help="run the scheduler (nightly recompression, reconciler); one leader at a time")
    b.add_argument("--loglevel", default="INFO")
    b.add_argument("--embedded", action="store_true", help=_EMBEDDED_HELP)
    b.add_argument("--allow-example-passwords", action="store_true", help=EXAMPLE_PASSWORDS_HELP)
    b.set_defaults(func=cmd_beat)

    o = sub.add_parser("ops-worker", help="run a worker for the ops queue (what beat schedules; no torch)")
    o.add_argument("--concurrency", type=int, default=1)
    o.add_argument("--loglevel", default="INFO")
    o.add_argument("--embedded", action="store_true", help=_EMBEDDED_HELP)
    o.add_argument("--allow-example-passwords", action="store_true", help=EXAMPLE_PASSWORDS_HELP)
    o.set_defaults(func=cmd_ops_worker)

    f = sub.add_parser("flower", help="run Flower on the configured broker (basic auth required)")
    f.add_argument("--address", help="interface to bind (default MODELPRESS_FLOWER_ADDRESS, 127.0.0.1)")
    f.add_argument("--port", type=int, help="port (default MODELPRESS_FLOWER_PORT, 5555)")
    f.add_argument("--insecure-localhost", action="store_true",
                   help="allow running without MODELPRESS_FLOWER_BASIC_AUTH, bound to 127.0.0.1 only")
    f.add_argument("--allow-example-passwords", action="store_true", help=EXAMPLE_PASSWORDS_HELP)
    f.set_defaults(func=cmd_flower)

    n = sub.add_parser("nightly", help="nightly recompression")
    nsub = n.add_subparsers(dest="nightly_action", required=True)
    r = nsub.add_parser("run-now", help="submit a night's jobs now (each model/recipe/backend once per night)")
    r.add_argument("--night", type=_night, help="YYYY-MM-DD (default: today, UTC)")
    r.set_defaults(func=cmd_nightly_run_now)
