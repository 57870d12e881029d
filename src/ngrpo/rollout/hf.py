"""Calling a Hugging Face causal LM the way the engine and replay need it, across transformers 5.x.

`hf_forward` is the model's own forward on input embeddings (the replay path, the prefill of the
dynamic-cache decoder, and every decoding step of it); `DynamicDecoder` is the generic decoder for
any causal LM that accepts `inputs_embeds`: one prefill per row and a `DynamicCache` that grows by
one position per step (what the engine did before the static decoder, `ngrpo.rollout.step`). It is
used for architectures the static decoder does not cover and as the reference in tests.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import Iterator

import torch

from ngrpo.utils.errors import NgrpoError

log = logging.getLogger(__name__)


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


@contextlib.contextmanager
def head_bypassed(head: torch.nn.Module, seen: list[torch.Tensor]) -> Iterator[None]:
    """Within the block `head(x)` returns `x` (recorded in `seen`): an instance attribute shadows
    the class's `forward` and is deleted on exit. The model's forward then returns its final
    hidden states as "logits", for a head run separately (the learner's chunked head, the
    dynamic decoder's `precision: learner` head)."""

    def passthrough(hidden: torch.Tensor) -> torch.Tensor:
        seen.append(hidden)
        return hidden

    head.forward = passthrough
    try:
        yield
    finally:
        del head.forward


class _HeadTransformed(Exception):
    """The model changed its head's output: the decoder falls back to the model's logits."""


class DynamicDecoder:
    """The model's own forward with a growing `DynamicCache`; every row prefilled separately.

    Same interface as `ngrpo.rollout.step.StaticDecoder` (`prefill`, `decode`, `rows`), without
    compaction (`can_compact = False`): finished rows keep being fed padding. `precision`
    (`rollout.precision`, under autocast): `learner` runs the output head outside autocast in
    the head's own dtype, as the learner's chunked head does (the body still runs as the model's
    forward runs it); `compute` takes the model's own logits (the autocast dtype's). A model
    whose head is not a plain `torch.nn.Linear`, or which transforms the head's output, gets its
    own logits either way."""

    can_compact = False
    cuda_graphs = False
    capture_seconds = 0.0
    graphs: dict = {}

    def __init__(self, model, precision: str = "learner") -> None:
        self.model = model
        self.cache = None
        self.mask: torch.Tensor | None = None  # (b, P + t) attention mask so far
        self.next_pos: torch.Tensor | None = None  # (b, 1) position of the next input
        self.rows = 0
        head = model.get_output_embeddings() if precision == "learner" else None
        self.head = head if isinstance(head, torch.nn.Linear) else None

    def _last_logits(self, embeds, mask, positions, last_only: bool) -> torch.Tensor:
        """Logits (b, V) fp32 of the last position of `embeds` (b, L, d)."""
        seen: list[torch.Tensor] = []
        bypass = contextlib.nullcontext() if self.head is None else head_bypassed(self.head, seen)
        with bypass:
            out = hf_forward(self.model, embeds, mask, positions, self.cache, last_only)
        if self.head is None:
            return out[:, -1].float()  # (b, V)
        if len(seen) != 1 or out.data_ptr() != seen[0].data_ptr():
            log.warning("%s transforms its head's output: the dynamic decoder takes its logits",
                        type(self.model).__name__)  # fmt: skip
            self.head = None
            raise _HeadTransformed
        hidden = out[:, -1]  # (b, d)
        with torch.autocast(hidden.device.type, enabled=False):  # as the learner's chunked head
            return self.head(hidden.to(self.head.weight.dtype)).float()  # (b, V)

    def prefill(self, embeds, prompt_mask, positions, expand) -> torch.Tensor:
        """Run the prompts (u, P, d); last prompt position's logits for each row (N, V) fp32.
        `expand` (N,) maps rows to prompts (this decoder prefills every row: it expands first)."""
        from transformers import DynamicCache

        embeds, prompt_mask, positions = embeds[expand], prompt_mask[expand], positions[expand]
        self.mask, self.rows = prompt_mask, embeds.shape[0]
        self.next_pos = prompt_mask.sum(-1, keepdim=True)  # (N, 1)
        for _ in range(2):  # a second time with the model's own logits if it transforms them
            self.cache = DynamicCache(config=self.model.config)
            try:
                return self._last_logits(embeds, prompt_mask, positions, last_only=True)  # (N, V)
            except _HeadTransformed:
                continue
        raise AssertionError("unreachable")  # pragma: no cover

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """One position for every row: inputs (b, 1, d) -> logits (b, V) fp32."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.rows, 1)], dim=1)  # (b, L + 1)
        logits = self._last_logits(x, self.mask, self.next_pos, last_only=False)
        self.next_pos = self.next_pos + 1
        return logits  # (b, V)

    def compact(self, keep: torch.Tensor) -> None:  # pragma: no cover - guarded by can_compact
        raise NgrpoError("the dynamic-cache decoder does not compact its batch")
