"""Tiny random causal LMs for the tests: one builder, so that the same seed and shape give the same
weights in every test file.

`tiny_lm` draws the weights right after `torch.manual_seed(seed)`; a shape is `small` (d 32, 2
layers, 4 query / 2 key-value heads) or `micro` (d 16, 1 layer, 2 / 1 heads). Untied embeddings
and an initializer range of 0.3 (sharp, varied distributions) unless asked otherwise. The model
comes in eval mode; tests that train call `.train()`.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

SHAPES = {
    "small": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2),
    "micro": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1),
}  # fmt: skip
ARCHITECTURES = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}


def tiny_lm(
    vocab: int = 100,
    *,
    seed: int = 0,
    arch: str = "qwen2",
    shape: str = "small",
    max_positions: int = 256,
    init_range: float = 0.3,
    tie: bool = False,
    model_class: type | None = None,
    **config,
):
    """A random causal LM (eval mode); `config` adds Hugging Face config fields (e.g. token ids).
    `model_class` replaces the architecture's class (a subclass, to change one behaviour)."""
    torch.manual_seed(seed)
    config_class, default_class = ARCHITECTURES[arch]
    hf_config = config_class(
        vocab_size=vocab, max_position_embeddings=max_positions, initializer_range=init_range,
        tie_word_embeddings=tie, **SHAPES[shape], **config,
    )  # fmt: skip
    return (model_class or default_class)(hf_config).eval()


def tiny_qwen2(tokenizer):
    """A small random Qwen2 over `tokenizer` (seed 0, Hugging Face's default initializer range,
    the tokenizer's EOS and padding ids)."""
    return tiny_lm(
        len(tokenizer), init_range=0.02, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
