"""Model shapes for memory planning: parameter counts of a Llama-family decoder, LoRA counts."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ngrpo.utils.errors import NgrpoError

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""Default LoRA targets (`model.lora.target_modules`): every projection of the decoder layers."""


@dataclass(frozen=True)
class ModelShape:
    """The shape of a Llama-family decoder (Qwen2, Llama): what memory depends on."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool = False
    attention_bias: bool = True  # Qwen2: q, k, v projections have biases

    @classmethod
    def from_config(cls, config: Mapping, source: str = "config.json") -> ModelShape:
        """From a Hugging Face `config.json` mapping; an `NgrpoError` naming a missing key."""
        keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads")  # fmt: skip
        missing = [k for k in keys if not isinstance(config.get(k), int)]
        if missing:
            raise NgrpoError(f"{source}: needs integer {', '.join(missing)} for a memory plan")
        heads = config["num_attention_heads"]
        bias = config.get("attention_bias", config.get("model_type") == "qwen2")
        return cls(
            vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            num_layers=config["num_hidden_layers"], num_heads=heads,
            num_kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            attention_bias=bool(bias),
        )  # fmt: skip

    @classmethod
    def from_preset(cls, name: str) -> ModelShape:
        """The shape of a preset of `ngrpo.models.presets.PRESETS` (Qwen2)."""
        from ngrpo.models.presets import PRESETS

        if name not in PRESETS:
            raise NgrpoError(f"unknown model shape {name!r}; choose one of {', '.join(PRESETS)}")
        return cls.from_config({**PRESETS[name], "model_type": "qwen2"}, source=f"preset {name}")

    @classmethod
    def from_model_dir(cls, path: str | Path) -> ModelShape:
        """From `path/config.json` (a Hugging Face model directory)."""
        file = Path(path).expanduser() / "config.json"
        try:
            config = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise NgrpoError(f"{file}: cannot read the model's shape ({err})") from None
        return cls.from_config(config.get("text_config", config), source=str(file))

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def projections(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear projection of one decoder layer."""
        d, i = self.hidden_size, self.intermediate_size
        return {"q_proj": (d, self.q_dim), "k_proj": (d, self.kv_dim), "v_proj": (d, self.kv_dim),
                "o_proj": (self.q_dim, d), "gate_proj": (d, i), "up_proj": (d, i),
                "down_proj": (i, d)}  # fmt: skip

    @property
    def layer_matmul_params(self) -> int:
        """Weights of one layer's projections (no biases, no norms)."""
        return sum(a * b for a, b in self.projections().values())

    @property
    def layer_params(self) -> int:
        bias = (self.q_dim + 2 * self.kv_dim) if self.attention_bias else 0
        return self.layer_matmul_params + bias + 2 * self.hidden_size  # + two RMSNorm weights

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def head_params(self) -> int:
        """The output projection's own weight (0 when tied to the input embedding)."""
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    @property
    def parameters(self) -> int:
        return (
            self.embedding_params
            + self.head_params
            + self.num_layers * self.layer_params
            + self.hidden_size
        )  # fmt: skip  (+ the final norm)

    def lora_params(self, r: int, targets: tuple[str, ...] = LORA_TARGETS) -> int:
        """Adapter parameters: r · (in + out) per targeted projection per layer."""
        shapes = self.projections()
        unknown = [t for t in targets if t.split(".")[-1] not in shapes]
        if unknown:
            raise NgrpoError(f"LoRA target {unknown[0]!r} is not a projection of this model "
                             f"(plan knows {', '.join(shapes)})")  # fmt: skip
        per_layer = sum(r * sum(shapes[t.split(".")[-1]]) for t in targets)
        return self.num_layers * per_layer
