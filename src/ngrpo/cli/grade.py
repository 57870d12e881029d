"""`ngrpo grade`: Grade model responses against gold answers."""

from __future__ import annotations

from ngrpo.cli._common import not_available


def register(subparsers) -> None:
    parser = subparsers.add_parser("grade", help="Grade model responses against gold answers", description="Grade model responses against gold answers.")
    parser.set_defaults(func=not_available("the rewards and evaluation issue"))
