"""Calling a Hugging Face causal LM the way the engine and replay need it, across transformers 5.x.

`hf_forward` is the model's own forward on input embeddings (the replay path, the prefill of the
dynamic-cache decoder, and every decoding step of it); `DynamicDecoder` is the generic decoder for
any causal LM that accepts `inputs_embeds`: one prefill per row and a `DynamicCache` that grows by
one position per step (what the engine did before the static decoder, `ngrpo.rollout.step`). It is
used for architectures the static decoder does not cover and as the reference in tests.
"""

from __future__ import annotations

import functools
import inspect

import torch

from ngrpo.utils.errors import NgrpoError


def input_embeddings(model) -> torch.nn.Module:
    """The model's input-embedding module, or an `NgrpoError` saying why it cannot be used."""
    try:
        module = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        module = None
    if module is None:
        raise NgrpoError(
            f"{type(model).__name__} has no input embeddings (get_input_embeddings()); the rollout "
            "engine needs a causal LM that accepts inputs_embeds"
        )
    return module


@functools.cache
def _forward_signature(model_class: type) -> tuple[str, bool]:
    """(name of the cache argument, whether `logits_to_keep` is accepted) for a model class."""
    params = inspect.signature(model_class.forward).parameters
    # transformers 5.24 renamed `past_key_values` to `cache` (old name deprecated until 5.40).
    return ("cache" if "cache" in params else "past_key_values"), "logits_to_keep" in params


def hf_forward(model, inputs_embeds, attention_mask, position_ids, cache=None, last_only=False):
    """`model(inputs_embeds=...)`'s logits (B, L, V), or (B, 1, V) with `last_only`."""
    cache_kwarg, has_logits_to_keep = _forward_signature(type(model))
    kwargs = {"use_cache": cache is not None}
    if cache is not None:
        kwargs[cache_kwarg] = cache
    if last_only and has_logits_to_keep:
        kwargs["logits_to_keep"] = 1
    out = model(
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        **kwargs,
    )
    return out.logits


class DynamicDecoder:
    """The model's own forward with a growing `DynamicCache`; every row prefilled separately.

    Same interface as `ngrpo.rollout.step.StaticDecoder` (`prefill`, `decode`, `rows`), without
    compaction (`can_compact = False`): finished rows keep being fed padding."""

    can_compact = False
    cuda_graphs = False
    capture_seconds = 0.0
    graphs: dict = {}

    def __init__(self, model) -> None:
        self.model = model
        self.cache = None
        self.mask: torch.Tensor | None = None  # (b, P + t) attention mask so far
        self.next_pos: torch.Tensor | None = None  # (b, 1) position of the next input
        self.rows = 0

    def prefill(self, embeds, prompt_mask, positions, expand) -> torch.Tensor:
        """Run the prompts (u, P, d); last prompt position's logits for each row (N, V) fp32.
        `expand` (N,) maps rows to prompts (this decoder prefills every row: it expands first)."""
        from transformers import DynamicCache

        embeds, prompt_mask, positions = embeds[expand], prompt_mask[expand], positions[expand]
        self.cache = DynamicCache(config=self.model.config)
        self.mask, self.rows = prompt_mask, embeds.shape[0]
        self.next_pos = prompt_mask.sum(-1, keepdim=True)  # (N, 1)
        logits = hf_forward(self.model, embeds, prompt_mask, positions, self.cache, last_only=True)
        return logits[:, -1].float()  # (N, V)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """One position for every row: inputs (b, 1, d) -> logits (b, V) fp32."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.rows, 1)], dim=1)  # (b, L + 1)
        logits = hf_forward(self.model, x, self.mask, self.next_pos, self.cache)
        self.next_pos = self.next_pos + 1
        return logits[:, -1].float()  # (b, V)

    def compact(self, keep: torch.Tensor) -> None:  # pragma: no cover - guarded by can_compact
        raise NgrpoError("the dynamic-cache decoder does not compact its batch")
