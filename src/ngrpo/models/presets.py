"""Model shapes for benchmarks at scale: random weights of a known architecture, no hub.

`r1-distill-1.5b` is DeepSeek-R1-Distill-Qwen-1.5B's shape (Qwen2, vocabulary 151,936, hidden
1,536, MLP 8,960, 28 layers, 12 query / 2 key-value heads, untied embeddings); `r1-distill-7b`
DeepSeek-R1-Distill-Qwen-7B's (vocabulary 152,064, hidden 3,584, MLP 18,944, 28 layers, 28 query /
4 key-value heads, untied; used by `ngrpo plan`, too big to build on most CPUs); `tiny` is the same
architecture small enough to run on a CPU in seconds (what CI exercises).
"""

from __future__ import annotations

import torch

from ngrpo.utils.errors import NgrpoError

PRESETS: dict[str, dict] = {
    "r1-distill-1.5b": dict(
        vocab_size=151_936, hidden_size=1_536, intermediate_size=8_960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=131_072,
        tie_word_embeddings=False,
    ),
    "r1-distill-7b": dict(
        vocab_size=152_064, hidden_size=3_584, intermediate_size=18_944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=131_072,
        tie_word_embeddings=False,
    ),
    "tiny": dict(
        vocab_size=1_000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4_096,
        tie_word_embeddings=False,
    ),
}  # fmt: skip


def preset_model(
    name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
):
    """A `Qwen2ForCausalLM` with random (seeded) weights of preset `name`, in eval mode."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if name not in PRESETS:
        raise NgrpoError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    torch.manual_seed(seed)
    config = Qwen2Config(**PRESETS[name], pad_token_id=0, eos_token_id=1)
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    return model.to(dtype).eval()
