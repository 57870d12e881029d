"""`ngrpo train`: Train a policy with GRPO / N-GRPO from a YAML config."""

from __future__ import annotations

from ngrpo.cli._common import not_available


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="Train a policy with GRPO / N-GRPO from a YAML config", description="Train a policy with GRPO / N-GRPO from a YAML config.")
    parser.set_defaults(func=not_available("the trainer issue"))
