"""`ngrpo demo`: the main job, GRPO vs N-GRPO vs STHT-style noise on the embedded default."""

from __future__ import annotations

import argparse
from pathlib import Path

from ngrpo.cli._common import parse_seeds


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="GRPO vs N-GRPO vs STHT-style noise on the embedded task (report and plots)",
        description=(
            "Build or load the embedded base model, train GRPO, N-GRPO (released weights) and the "
            "STHT-style Gaussian baseline with identical budgets and seeds, evaluate them on the "
            "ID and OOD splits with mixing off, run the semantic-consistency probe once per seed, "
            "and write report.md (effect sizes with 95%% CIs and verdicts), results.json and PNG "
            "plots. --full adds N-GRPO with the paper text's weights and runs 5 seeds."
        ),
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few minutes")
    parser.add_argument(
        "--full", action="store_true",
        help="also N-GRPO with the paper text's weights; >= 5 seeds (default 5)",
    )  # fmt: skip
    parser.add_argument(
        "--seeds", default=None,
        help="a count (3 = seeds 0,1,2) or a list (7,8,9; one seed: 7,); "
        "default 3, with --full 5, with --quick 1",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=Path("ngrpo-demo"), help="output directory (default ngrpo-demo)"
    )
    parser.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ngrpo.cli._common import progress_bar
    from ngrpo.study.demo import run_demo
    from ngrpo.study.report import main_table, verdict_lines
    from ngrpo.study.settings import DemoSettings

    preset = DemoSettings.quick if args.quick else DemoSettings.default
    seeds = None if args.seeds is None else parse_seeds(args.seeds)
    settings = preset(args.out, seeds, full=args.full)
    settings.validate()  # before anything is built
    with progress_bar() as update:
        results = run_demo(settings, progress=update)
    rows = main_table(results)
    table = Table(title=f"ngrpo demo ({results['wall_seconds']:.0f} s) — percent, mixing off")
    for i, column in enumerate(rows[0]):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows[1:]:
        table.add_row(*row)
    console = Console()
    console.print(table)
    for line in verdict_lines(results):
        console.print(line.removeprefix("- ").replace("**", ""), markup=False)
    console.print(f"report: {args.out / 'report.md'}")
    return 0
