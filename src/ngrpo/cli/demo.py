"""`ngrpo demo`: the main job on the embedded default.

First version: builds (or re-uses) the embedded base model and reports its accuracy on the
in-distribution and out-of-distribution splits, with mixing off. The GRPO / N-GRPO / STHT
comparison is added by the demo issue on top of the trainer.
"""

from __future__ import annotations

import argparse

from ngrpo.cli._common import progress_bar


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="Run the main job on the embedded default (base model accuracy for now)",
        description="Build or load the embedded base model and report its ID / OOD accuracy.",
    )
    parser.add_argument("--seed", type=int, default=0, help="base-model build seed")
    parser.add_argument("--n", type=int, default=8, help="samples per problem")
    parser.add_argument("--limit", type=int, default=100, help="problems per split")
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ngrpo.base_model import ensure_base_model
    from ngrpo.cli.eval import _table
    from ngrpo.data import load_benchmark
    from ngrpo.errors import NgrpoError
    from ngrpo.evaluation import evaluate
    from ngrpo.models import load_model_and_tokenizer
    from ngrpo.rewards import GradingPool

    if args.n < 1 or args.limit < 1:
        raise NgrpoError("--n and --limit must be >= 1")
    console = Console()
    with progress_bar() as update:
        model_dir = ensure_base_model(seed=args.seed, progress=update)
    console.print(f"base model: {model_dir}")
    model, tokenizer = load_model_and_tokenizer(model_dir)
    summaries = {}
    with GradingPool() as pool, progress_bar() as update:
        for split in ("arith-id", "arith-ood"):
            bench = load_benchmark(split, limit=args.limit)
            update(f"evaluating {split}", 0, 1)
            result = evaluate(
                model, tokenizer, bench.examples, n=args.n, temperature=args.temperature,
                top_p=args.top_p, max_new_tokens=96, seed=args.seed, pool=pool,
            )  # fmt: skip
            summaries[split] = result.summary
            update(f"evaluating {split}", 1, 1)
    console.print(_table(summaries, args.n))
    return 0
