"""`ngrpo neighbors`: the nearest tokens to a token in a model's input-embedding table."""

from __future__ import annotations

import argparse

from ngrpo.method.neighbors import SIMILARITIES
from ngrpo.utils.errors import NgrpoError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "neighbors",
        help="Nearest tokens to a token in the model's input-embedding table",
        description="Print the nearest tokens to TOKEN in the model's input-embedding table.",
    )
    parser.add_argument("--model", required=True, help="local HF model directory, or `base`")
    parser.add_argument("--token", required=True, help="a text that encodes to exactly one token")
    parser.add_argument("--k", type=int, default=5, help="number of neighbours (default 5)")
    parser.add_argument("--metric", default="cosine", choices=list(SIMILARITIES))
    parser.set_defaults(func=handler)


def single_token_id(tokenizer, text: str) -> int:
    """The id of `text` when it is exactly one known token, else a clear error."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
        raise NgrpoError(f"the tokenizer cannot encode {text!r} (unknown token)")
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise NgrpoError(f"{text!r} encodes to {len(ids)} tokens {pieces}, not one")
    return ids[0]


def handler(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ngrpo.method.neighbors import bruteforce_neighbors
    from ngrpo.models.load import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(args.model)
    token_id = single_token_id(tokenizer, args.token)
    table_weights = model.get_input_embeddings().weight
    if not 1 <= args.k < table_weights.shape[0]:
        raise NgrpoError(f"--k must be between 1 and {table_weights.shape[0] - 1}, got {args.k}")
    ids, scores = bruteforce_neighbors(table_weights, [token_id], args.k, args.metric)
    table = Table(title=f"nearest to {args.token!r} (id {token_id}) by {args.metric}")
    table.add_column("rank", justify="right")
    table.add_column("token")
    table.add_column("id", justify="right")
    table.add_column(args.metric, justify="right")
    pairs = zip(ids[0].tolist(), scores[0].tolist(), strict=True)
    for rank, (tid, score) in enumerate(pairs, start=1):
        table.add_row(str(rank), tokenizer.convert_ids_to_tokens(tid), str(tid), f"{score:.4f}")
    Console().print(table)
    return 0
