"""CLI subcommands (see modelpress.commands)."""

from __future__ import annotations

import argparse


def add_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register this module's subcommands on the ``modelpress`` parser."""
