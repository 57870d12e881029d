"""The `ngrpo` command line: one module per sub-command, each with `register(subparsers)`.

Library code never prints; the modules here render results (rich tables, progress bars) and turn
`NgrpoError` into a one-line message and a non-zero exit (2; a graceful stop of training, 75:
`ngrpo.utils.errors`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from ngrpo import __version__
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


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except TrainingStopped as err:  # a graceful stop (SIGTERM / SIGINT): not an error
        print(f"stopped: {err}", file=sys.stderr)
        return err.exit_code
    except NgrpoError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt as err:  # Ctrl-C, or a second stop signal during training
        print("interrupted", file=sys.stderr)
        return getattr(err, "exit_code", 130)


if __name__ == "__main__":
    sys.exit(main())
