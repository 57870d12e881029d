"""`ngrpo demo`: the main job, GRPO vs N-GRPO vs STHT-style noise on the embedded default."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="GRPO vs N-GRPO vs STHT-style noise on the embedded task (report and plots)",
        description=(
            "Build or load the embedded base model, train GRPO, N-GRPO and the STHT-style "
            "Gaussian baseline with identical budgets and seeds, evaluate them on the ID and OOD "
            "splits with mixing off, run the semantic-consistency probe, and write report.md, "
            "results.json and PNG plots. About 10 minutes on 2 CPU cores (--quick: 2-3 minutes); "
            "the first run also builds the base model."
        ),
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few minutes")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per method (CIs need >= 2)")
    parser.add_argument(
        "--out", type=Path, default=Path("ngrpo-demo"), help="output directory (default ngrpo-demo)"
    )
    parser.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ngrpo.cli._common import progress_bar
    from ngrpo.demo import DemoSettings, main_table, run_demo

    settings = (
        DemoSettings.quick(args.out, args.seeds) if args.quick
        else DemoSettings(out=args.out, seeds=args.seeds)
    )  # fmt: skip
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
    for c in results["comparisons"]:
        if c["split"] == "arith-id":
            note = "within noise" if c["within_noise"] else "outside noise"
            if c["seeds"] < 2:
                note = "one seed: cannot tell from noise"
            console.print(
                f"{c['a']} − {c['b']} (ID mean@n): {100 * c['difference']:+.1f} points ({note})"
            )
    console.print(f"report: {args.out / 'report.md'}")
    return 0
