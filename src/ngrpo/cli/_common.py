"""Helpers shared by the CLI modules."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ngrpo.errors import NotAvailableError


def not_available(issue: str):
    """Handler for a command whose issue has not landed yet: fails, prints nothing else."""

    def handler(args: argparse.Namespace) -> int:
        raise NotAvailableError(f"`ngrpo {args.command}` is not available yet ({issue})")

    return handler


@contextmanager
def progress_bar() -> Iterator[Callable[..., None]]:
    """A rich progress bar on stderr, driven by `update(stage, done, total, info="")` callbacks.

    Each new stage name gets its own bar; stdout stays clean for the command's results.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        console=Console(stderr=True),
    )  # fmt: skip
    tasks: dict[str, int] = {}

    def update(stage: str, done: int, total: int, info: str = "") -> None:
        if stage not in tasks:
            tasks[stage] = progress.add_task(stage, total=total, info=info)
        progress.update(tasks[stage], completed=done, total=total, info=info)

    with progress:
        yield update
