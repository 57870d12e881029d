"""Helpers shared by the CLI modules."""

from __future__ import annotations

import argparse

from ngrpo.errors import NotAvailableError


def not_available(issue: str):
    """A command handler for a command whose issue has not landed yet: fails, prints nothing else."""

    def handler(args: argparse.Namespace) -> int:
        raise NotAvailableError(f"`ngrpo {args.command}` is not available yet ({issue})")

    return handler
