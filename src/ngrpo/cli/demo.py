"""`ngrpo demo`: the main job, GRPO vs N-GRPO vs STHT-style noise on the embedded default."""

from __future__ import annotations

import argparse
from pathlib import Path

from ngrpo.cli._common import parse_seeds
from ngrpo.utils.errors import NgrpoError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="GRPO vs N-GRPO vs STHT-style noise on the embedded task (report and plots)",
        description=(
            "Start from the base model shipped with ngrpo, train GRPO, N-GRPO (released weights) "
            "and the STHT-style Gaussian baseline with identical budgets and seeds, evaluate them "
            "on the ID split and two OOD splits (larger start values, longer chains) with mixing "
            "off, run the semantic-consistency probe, and write report.md (effect sizes with 95% "
            "CIs and verdicts, the hypotheses H1-H3, power), results.json and PNG plots. --full "
            "adds N-GRPO with the paper text's weights and with the sampled anchor, pass@k up to "
            "k = 256 and a 100-step setting, on 20 seeds. Finished runs in --out are re-used."
        ),
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few minutes")
    parser.add_argument(
        "--full", action="store_true",
        help="every method, pass@k to k = 256, 100-step runs; >= 5 seeds (default 20)",
    )  # fmt: skip
    parser.add_argument(
        "--seeds", default=None,
        help="a count (3 = seeds 0,1,2) or a list (7,8,9; one seed: 7,); "
        "default 3, with --full 20, with --quick 1",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=Path("ngrpo-demo"), help="output directory (default ngrpo-demo)"
    )
    parser.add_argument(
        "--jobs", type=int, default=None,
        help="runs trained at once, each on one CPU thread (default: the CPU count, at most 4); "
        "the results do not depend on it",
    )  # fmt: skip
    parser.add_argument(
        "--stages", default=None,
        help="which stages compute their missing units, in this order (comma-separated from "
        "long, diagnosis, main; default all, in that order): long = the 100-step GRPO and "
        "N-GRPO (release), diagnosis = the 100-step switches, main = the 20-step comparison",
    )  # fmt: skip
    parser.add_argument(
        "--report-only", action="store_true",
        help="compute nothing: write the report from the finished units in --out (the missing "
        "ones are listed as pending)",
    )  # fmt: skip
    parser.set_defaults(func=handler)


def default_jobs() -> int:
    import os

    return max(1, min(4, os.cpu_count() or 1))


def handler(args: argparse.Namespace) -> int:
    import dataclasses

    from rich.console import Console
    from rich.table import Table

    from ngrpo.cli._common import progress_bar
    from ngrpo.study.demo import run_demo
    from ngrpo.study.report import main_table, verdict_lines
    from ngrpo.study.settings import DemoSettings

    preset = DemoSettings.quick if args.quick else DemoSettings.default
    seeds = None if args.seeds is None else parse_seeds(args.seeds)
    settings = preset(args.out, seeds, full=args.full)
    if args.report_only:
        settings = dataclasses.replace(settings, stages=())
    elif args.stages is not None:
        stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
        if not stages:
            raise NgrpoError("--stages: none given (or use --report-only)")
        settings = dataclasses.replace(settings, stages=stages)
    settings.validate()  # before anything is built
    with progress_bar() as update:
        results = run_demo(settings, progress=update, jobs=args.jobs or default_jobs())
    console = Console()
    if results.get("summary"):  # the 20-step comparison has at least one finished seed
        rows = main_table(results)
        table = Table(title=f"ngrpo demo ({results['wall_seconds']:.0f} s) — percent, mixing off")
        for i, column in enumerate(rows[0]):
            table.add_column(column, justify="left" if i == 0 else "right")
        for row in rows[1:]:
            table.add_row(*row)
        console.print(table)
        for line in verdict_lines(results):
            console.print(line.removeprefix("- ").replace("**", ""), markup=False)
    for stage, names in results["pending"].items():
        console.print(f"pending ({stage}): {len(names)} units", markup=False)
    console.print(f"report: {args.out / 'report.md'}")
    if (args.out / "view.html").is_file():
        console.print(f"page: {args.out / 'view.html'} (curves and completions, opens offline)")
    return 0
