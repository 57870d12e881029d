"""`ngrpo task`: export a split of the embedded task as JSONL (`problem`, `answer`, `solution`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ngrpo.tasks import SPLITS
from ngrpo.utils.errors import NgrpoError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "task",
        help="Export a split of the embedded arithmetic task as JSONL",
        description=(
            "Write a split of the embedded task as JSON lines with fields problem, answer and "
            "solution (the layout of the shipped benchmark files, plus a worked solution)."
        ),
    )
    parser.add_argument("--split", required=True, help=f"one of {', '.join(SPLITS)}")
    parser.add_argument("--num", type=int, default=None, help="number of problems")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="output file (default: stdout)")
    parser.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from ngrpo.tasks import generate

    lines = [json.dumps(p.to_json()) + "\n" for p in generate(args.split, args.num, args.seed)]
    if args.out is None:
        sys.stdout.writelines(lines)
        return 0
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("".join(lines), encoding="utf-8")
    except OSError as err:
        raise NgrpoError(f"cannot write {str(args.out)!r}: {err.strerror}") from err
    print(f"{len(lines)} problems -> {args.out}")
    return 0
