"""Helpers shared by the CLI modules."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ngrpo.utils.errors import NgrpoError, NotAvailableError


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


def parse_seeds(text: str) -> tuple[int, ...]:
    """`--seeds`: a count N (seeds 0..N-1) or a comma-separated list of distinct seeds.

    `"3"` -> (0, 1, 2); `"7,8,9"` -> (7, 8, 9); a single seed of one's own is `"7,"`.
    """
    parts = [part.strip() for part in text.split(",")]
    if len(parts) > 1 and parts[-1] == "":
        parts = parts[:-1]  # "7," is the list (7,)
    try:
        values = [int(part) for part in parts]
    except ValueError:
        raise NgrpoError(
            f"--seeds takes a count (3) or a comma-separated list of integers (7,8,9), got {text!r}"
        ) from None
    if len(values) == 1 and "," not in text:
        if values[0] < 1:
            raise NgrpoError(f"--seeds: the number of seeds must be >= 1, got {values[0]}")
        return tuple(range(values[0]))
    if any(v < 0 for v in values):
        raise NgrpoError(f"--seeds: seeds must be non-negative, got {text!r}")
    duplicates = sorted({v for v in values if values.count(v) > 1})
    if duplicates:
        raise NgrpoError(f"--seeds: seed {duplicates[0]} is listed twice in {text!r}")
    return tuple(values)


# ------------------------------------------------------------------ benchmarks (`ngrpo bench`)


def _require_positive(args: argparse.Namespace, *names: str) -> None:
    """An error naming the first of these integer options (attribute names) that is below 1."""
    for name in names:
        value = getattr(args, name)
        if value < 1:
            raise NgrpoError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def _check_preset(name: str | None) -> None:
    """An error for a `--preset` that is not one of `ngrpo.models.presets.PRESETS` (None: none)."""
    from ngrpo.models.presets import PRESETS

    if name is not None and name not in PRESETS:
        raise NgrpoError(f"--preset: unknown preset {name!r}; choose one of {', '.join(PRESETS)}")


def _strategy_list(text: str) -> tuple[str, ...]:
    """`--strategies`: comma-separated exploration strategies, at least one, each known."""
    from ngrpo.method.exploration import STRATEGIES

    strategies = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        what = f"unknown {unknown}" if unknown else "none given"
        raise NgrpoError(f"--strategies: {what}; choose from {', '.join(STRATEGIES)}")
    return strategies


def _dtype_name(args) -> str:
    """`--dtype`, or bfloat16 on CUDA and float32 elsewhere; an error for anything else."""
    name = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if name not in ("bfloat16", "float32"):
        raise NgrpoError(f"--dtype must be one of bfloat16, float32, got {name!r}")
    return name


_THREADS_BEFORE: list[int] = []  # torch's CPU thread counts that `--threads` replaced


def _set_threads(threads: int | None) -> None:
    """`--threads`: torch's CPU thread count for this command; `restore_threads` (called by
    `ngrpo.cli.main` when the command ends) puts the previous one back, so a library caller of
    `main` does not inherit it."""
    if threads is None:
        return
    if threads < 1:
        raise NgrpoError(f"--threads must be >= 1, got {threads}")
    import torch

    _THREADS_BEFORE.append(torch.get_num_threads())
    torch.set_num_threads(threads)


def restore_threads() -> None:
    """Undo the `_set_threads` calls of the command that ran (a no-op if there were none)."""
    if _THREADS_BEFORE:
        import torch

        torch.set_num_threads(_THREADS_BEFORE[0])
        _THREADS_BEFORE.clear()


def _write_json(path: Path | None, report: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")


def _prompts(tokenizer, batch: int) -> list[list[int]]:
    from ngrpo.models.tokenizer import encode_prompt
    from ngrpo.tasks import generate as generate_problems

    problems = generate_problems("arith-train", num=batch, seed=0)
    if tokenizer.chat_template:
        return [encode_prompt(tokenizer, p.problem) for p in problems]
    return [tokenizer(p.problem, add_special_tokens=False)["input_ids"] for p in problems]
