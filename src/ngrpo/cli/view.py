"""`ngrpo view`: one self-contained HTML page (curves and a completions browser) for run
directories (`ngrpo.study.view`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ngrpo.utils.errors import NgrpoError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "view",
        help="Write an offline HTML page of one or several runs: curves and completions",
        description=(
            "Write one self-contained HTML file (no network: it opens on an offline node) with "
            "the metric curves of the runs overlaid and a browser of their completion files "
            "(completions/step-N.jsonl, logging.completions_every) in which every mixed token is "
            "highlighted with its anchor, neighbours and weights."
        ),
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    parser.add_argument("--title", default=None, help="page title (default: the run names)")
    parser.add_argument(
        "--max-completion-files", type=int, default=20,
        help="completion files kept per run, spread over the run (default 20)",
    )  # fmt: skip
    parser.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from ngrpo.study.view import write_page

    if args.max_completion_files < 1:
        raise NgrpoError("--max-completion-files must be >= 1")
    try:
        out = write_page(args.run_dirs, args.out, args.title, args.max_completion_files)
    except OSError as err:
        raise NgrpoError(f"cannot write {str(args.out)!r}: {err.strerror}") from err
    print(out)
    return 0
