"""`ngrpo eval`: Evaluate a model on benchmarks with pass@k (mixing off)."""

from __future__ import annotations

from ngrpo.cli._common import not_available


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="Evaluate a model on benchmarks with pass@k (mixing off)", description="Evaluate a model on benchmarks with pass@k (mixing off).")
    parser.set_defaults(func=not_available("the rewards and evaluation issue"))
