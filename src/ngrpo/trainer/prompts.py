"""Training prompts: their deterministic order over epochs (`PromptSampler`, part of the
trainer state) and their encoding (chat format, prompt suffix, `data.max_prompt_length`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ngrpo.config import TrainConfig
from ngrpo.utils.errors import NgrpoError


@dataclass
class PromptSampler:
    """Deterministic prompt order: a fresh seeded permutation every epoch over the data."""

    size: int
    seed: int
    shuffle: bool = True
    epoch: int = 0
    position: int = 0
    _order: list[int] = field(default_factory=list, repr=False)

    def _permutation(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.size, generator=gen).tolist()

    def take(self, count: int) -> list[int]:
        out = []
        while len(out) < count:
            if not self._order:
                self._order = self._permutation()
            out.append(self._order[self.position])
            self.position += 1
            if self.position == self.size:
                self.epoch, self.position, self._order = self.epoch + 1, 0, []
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self._order = state["epoch"], state["position"], []


def _with_suffix(example, suffix: str):
    """The prompt to encode: the problem text, or the messages (suffix on the last user turn)."""
    if example.messages is None:
        return example.problem + suffix
    messages = [dict(m) for m in example.messages]
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    messages[last_user]["content"] += suffix
    return messages


def encode_prompts(tokenizer, examples, cfg: TrainConfig) -> tuple[list, list[list[int]], int]:
    """Chat-formatted prompt ids; prompts over `data.max_prompt_length` are dropped (counted) or
    rejected, as `data.long_prompts` says. Returns (kept examples, their ids, dropped count)."""
    from ngrpo.evaluation import build_prompts

    ids = build_prompts(tokenizer, [_with_suffix(e, cfg.data.prompt_suffix) for e in examples])
    limit = cfg.data.max_prompt_length
    kept = [(e, p) for e, p in zip(examples, ids, strict=True) if len(p) <= limit]
    dropped = len(examples) - len(kept)
    if dropped and cfg.data.long_prompts == "reject":
        raise NgrpoError(
            f"{dropped} training prompts are longer than data.max_prompt_length="
            f"{cfg.data.max_prompt_length}; raise it or set data.long_prompts=drop"
        )
    if not kept:
        raise NgrpoError(
            f"no training prompt fits data.max_prompt_length={cfg.data.max_prompt_length}"
        )
    return [e for e, _ in kept], [p for _, p in kept], dropped
