"""The model's position limit, and the check that a prompt plus its response fits in it.

A causal LM is built for `max_position_embeddings` positions (a `config.json` field; multimodal
configs keep it under `text_config`). Nothing stops generation past it: rotary embeddings extend,
and a model then trains and is scored on positions it never saw. ngrpo checks every length it is
given against the limit (`ngrpo train`: `data.max_prompt_length + rollout.max_completion_length`;
evaluation: the longest prompt + the new tokens; `ngrpo plan`: as train) and stops with an error
naming both numbers, as vLLM refuses a request beyond `max_model_len`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ngrpo.utils.errors import NgrpoError

LIMIT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length")
"""config.json fields that hold the position limit, the first present wins (Llama/Qwen, GPT-2,
some others)."""


def position_limit(config: Any) -> int | None:
    """The position limit of a model config (a transformers config or a config.json mapping), or
    None when it names none."""
    if not isinstance(config, Mapping):
        config = config.to_dict() if hasattr(config, "to_dict") else vars(config)
    config = config.get("text_config") or config
    for key in LIMIT_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def position_limit_of_dir(model_dir: str | Path) -> int | None:
    """The position limit in `model_dir/config.json` (None when absent or unreadable: the model
    loader reports an unreadable config itself)."""
    path = Path(model_dir).expanduser() / "config.json"
    try:
        return position_limit(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def check_positions(
    limit: int | None, prompt: tuple[str, int], new: tuple[str, int], where: str = ""
) -> None:
    """`NgrpoError` when prompt + new tokens exceed `limit` (None: unknown, no check).

    `prompt` and `new` are (what sets it, tokens), e.g. `("data.max_prompt_length", 96)`; the
    message names both, their sum, the limit and the largest response that fits."""
    if limit is None:
        return
    (prompt_name, prompt_tokens), (new_name, new_tokens) = prompt, new
    if prompt_tokens + new_tokens <= limit:
        return
    room = limit - prompt_tokens
    fix = (
        f"set {new_name} to at most {room}" if room > 0
        else f"shorten the prompts ({prompt_name})"
    )  # fmt: skip
    raise NgrpoError(
        f"{prompt_name} ({prompt_tokens}) + {new_name} ({new_tokens}) = "
        f"{prompt_tokens + new_tokens} tokens exceed the model's {limit} positions "
        f"(max_position_embeddings{f' of {where}' if where else ''}); {fix}"
    )
