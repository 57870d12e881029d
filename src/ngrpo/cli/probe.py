"""`ngrpo probe`: Semantic-consistency probe."""

from __future__ import annotations

from ngrpo.cli._common import not_available


def register(subparsers) -> None:
    parser = subparsers.add_parser("probe", help="Semantic-consistency probe", description="Semantic-consistency probe.")
    parser.set_defaults(func=not_available(" Gaussian noise vs neighbour mixing:the demo issue"))
