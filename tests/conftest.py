"""Shared fixtures: the embedded base model (built once per machine, cached under $NGRPO_HOME)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def base_model_dir() -> Path:
    """Directory of the embedded base model; the first use on a machine builds it (minutes)."""
    from ngrpo.models.base_model import ensure_base_model

    return ensure_base_model()


@pytest.fixture(scope="session")
def embedded_tokenizer():
    from ngrpo.models.tokenizer import build_tokenizer

    return build_tokenizer()


def tiny_qwen2(tokenizer):
    """A small random Qwen2ForCausalLM over `tokenizer` (seeded: the same weights every call)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return Qwen2ForCausalLM(config).eval()
