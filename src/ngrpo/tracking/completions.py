"""Completion rows: what the policy wrote at a step and what mixing did to it, as JSON lines.

`completion_rows` turns a step's rollout batch into one row per response:

    {"step", "kind": "train", "group", "sample", "prompt", "response", "tokens", "sep",
     "reward", "rewards": {function: value}, "advantage", "length", "truncated",
     "mixed": [{"position", "token", "anchor", "neighbors": [{"token", "weight"}],
                "anchor_weight", "noise_norm", "next"}]}

`tokens` are the response's tokens as text, special tokens (EOS) included (joined with `sep`, " "
for a word-level tokenizer and "" for a byte-level one, they give the decoded response); `mixed`
lists every response position whose input was mixed: `token` is the sampled token written there
(the text keeps it), `anchor` and `neighbors` the record's candidates (slot 0, then the others
with weight > 0), `noise_norm` the norm of the additive noise (Gaussian-type strategies; None
otherwise) and `next` the token the model wrote after that input (None at the last position).
`write_completions` and `read_completions` store a step's rows as `completions/step-NNNNNN.jsonl`
in the run directory (evaluation samples as `completions/eval-step-NNNNNN.jsonl`); `table_rows`
flattens rows for the trackers' table types.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ngrpo.rollout.batch import RolloutBatch
from ngrpo.utils.io import write_text_atomically

COMPLETIONS = "completions"


def _pieces(tokenizer, ids: list[int]) -> list[str]:
    return [tokenizer.decode([i]) for i in ids]


def _joiner(tokenizer, ids: list[int], pieces: list[str]) -> str:
    """ " " when the tokenizer joins tokens with spaces (word level), else "" (byte-level BPE
    pieces carry their own spaces); judged on the text with special tokens kept."""
    text = tokenizer.decode(ids)
    return " " if "".join(pieces) != text and " ".join(pieces) == text else ""


def completion_rows(
    batch: RolloutBatch,
    texts: Sequence[str],
    rewards: Sequence[float],
    advantages: Sequence[float],
    tokenizer,
    step: int,
    reward_values: dict[str, Sequence[float | None]] | None = None,
    group_size: int = 1,
) -> list[dict[str, Any]]:
    """One row per response of `batch` (rows prompt-major: row i is sample i % group_size of group
    i // group_size). `reward_values`: each reward function's value per row (None: not known)."""
    p = batch.prompt_ids.shape[1]
    lengths = batch.response_mask.sum(-1).tolist()  # (N,)
    soft = batch.soft_inputs
    mixed_at = batch.mixed.nonzero().tolist()  # [(row, t)]
    by_row: dict[int, list[int]] = {}
    for row, t in mixed_at:
        by_row.setdefault(row, []).append(t)
    rows = []
    for i, text in enumerate(texts):
        ids = batch.response_ids[i, : lengths[i]].tolist()
        prompt = batch.prompt_ids[i][batch.prompt_mask[i].bool()].tolist()
        pieces = _pieces(tokenizer, ids)
        mixed = []
        for t in by_row.get(i, []):
            cand = soft.ids[i, p + t].tolist()  # (K,)
            weights = soft.weights[i, p + t].float().tolist()  # (K,)
            noise = None if soft.noise is None else float(soft.noise[i, p + t].float().norm())
            mixed.append({
                "position": t, "token": pieces[t],
                "anchor": tokenizer.decode([cand[0]]), "anchor_weight": round(weights[0], 6),
                "neighbors": [
                    {"token": tokenizer.decode([c]), "weight": round(w, 6)}
                    for c, w in zip(cand[1:], weights[1:], strict=True) if w > 0
                ],
                "noise_norm": noise, "next": pieces[t + 1] if t + 1 < len(pieces) else None,
            })  # fmt: skip
        rows.append({
            "step": step, "kind": "train", "group": i // group_size, "sample": i % group_size,
            "prompt": tokenizer.decode(prompt, skip_special_tokens=True),
            "response": text, "tokens": pieces, "sep": _joiner(tokenizer, ids, pieces),
            "reward": float(rewards[i]),
            "rewards": {k: v[i] for k, v in (reward_values or {}).items()},
            "advantage": float(advantages[i]), "length": len(ids),
            "truncated": bool(batch.truncated[i]) if batch.truncated is not None else None,
            "mixed": mixed,
        })  # fmt: skip
    return rows


def completions_path(run_dir: str | Path, step: int, kind: str = "train") -> Path:
    prefix = "" if kind == "train" else f"{kind}-"
    return Path(run_dir) / COMPLETIONS / f"{prefix}step-{step:06d}.jsonl"


def write_completions(
    run_dir: str | Path, step: int, rows: list[dict], kind: str = "train"
) -> Path:
    """`completions/[eval-]step-NNNNNN.jsonl` (written whole, atomically); returns its path."""
    path = completions_path(run_dir, step, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, "".join(json.dumps(row) + "\n" for row in rows))
    return path


def read_completions(path: str | Path) -> list[dict]:
    """The rows of one completions file."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def table_rows(rows: list[dict]) -> list[dict[str, Any]]:
    """Rows flattened for a tracker table: scalars as they are, `rewards` one column per function,
    `mixed` as a count and a JSON column, `tokens` / `sep` left out (the response holds them)."""
    flat = []
    for row in rows:
        out = {k: v for k, v in row.items() if k not in ("tokens", "sep", "rewards", "mixed")}
        out.update({f"reward/{k}": v for k, v in row.get("rewards", {}).items()})
        if "mixed" in row:
            out["mixed_count"] = len(row["mixed"])
            out["mixing"] = json.dumps(row["mixed"])
        flat.append(out)
    return flat


def mixed_count(rows: list[dict]) -> int:
    """Mixed positions over all rows."""
    return sum(len(row.get("mixed", ())) for row in rows)
