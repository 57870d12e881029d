"""The `ngrpo` command line: one module per sub-command, each with `register(subparsers)`.

Library code never prints; the modules here render results (rich tables, progress bars) and turn
`NgrpoError` into a one-line message and a non-zero exit (2; a graceful stop of training, 75:
`ngrpo.utils.errors`).
"""

from __future__ import annotations

import argparse
import atexit
import gc
import logging
import os
import sys
from collections.abc import Sequence

from ngrpo import __version__
from ngrpo.cli._common import restore_threads
from ngrpo.utils.errors import NgrpoError, TrainingStopped

# Order is the order shown by `ngrpo --help`.
COMMANDS = (
    "build-base", "demo", "train", "eval", "export", "grade", "bench", "neighbors", "probe",
    "task", "plan", "view",
)  # fmt: skip


def _module_for(command: str):
    import importlib

    return importlib.import_module(f"ngrpo.cli.{command.replace('-', '_')}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ngrpo",
        description="GRPO and N-GRPO (Semantic Neighbor Mixing) for reasoning language models.",
    )
    parser.add_argument("--version", action="version", version=f"ngrpo {__version__}")
    parser.add_argument("--log-level", default="WARNING", help="Python logging level")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        _module_for(command).register(subparsers)
    return parser


def _quiet_libraries() -> None:
    """No third-party progress bars on the console: the CLI draws its own, and errors stay one
    line. Set before transformers is imported; switched off directly if it already was."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def _exit_fast() -> None:
    """After a stop signal the process exits against a scheduler's grace period, and the
    interpreter's final garbage collection over the heap of torch, transformers and sympy took
    4-6 s of it (measured: `ngrpo train` on a loaded 2-core host, `docs/stopping.md`). Freezing
    the heap at exit (`gc.freeze`, in an `atexit` hook, so a caller of `main` in a longer-lived
    process keeps collecting) skips that pass; the OS reclaims the memory either way."""
    atexit.register(gc.freeze)


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except TrainingStopped as err:  # a graceful stop (SIGTERM / SIGINT): not an error
        print(f"stopped: {err}", file=sys.stderr)
        _exit_fast()
        return err.exit_code
    except NgrpoError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt as err:  # Ctrl-C, or a second stop signal during training
        print("interrupted", file=sys.stderr)
        _exit_fast()
        return getattr(err, "exit_code", 130)
    finally:
        restore_threads()  # a bench's `--threads` ends with the command


if __name__ == "__main__":
    sys.exit(main())
