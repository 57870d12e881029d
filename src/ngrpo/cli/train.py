"""`ngrpo train`: train a policy with GRPO / N-GRPO from a YAML config."""

from __future__ import annotations

from ngrpo.cli._common import not_available

HELP = "Train a policy with GRPO / N-GRPO from a YAML config"


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help=HELP, description=HELP + ".")
    parser.set_defaults(func=not_available("the trainer issue"))
