"""`ngrpo bench`: Benchmarks (rollout, learner) written as JSON."""

from __future__ import annotations

from ngrpo.cli._common import not_available


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="Benchmarks (rollout, learner) written as JSON", description="Benchmarks (rollout, learner) written as JSON.")
    parser.set_defaults(func=not_available("the rollouts issue"))
