"""`ngrpo probe`: semantic-consistency probe, Gaussian noise vs neighbour mixing."""

from __future__ import annotations

from ngrpo.cli._common import not_available

HELP = "Semantic-consistency probe: Gaussian noise vs neighbour mixing"


def register(subparsers) -> None:
    parser = subparsers.add_parser("probe", help=HELP, description=HELP + ".")
    parser.set_defaults(func=not_available("the demo issue"))
