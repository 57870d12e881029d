"""The rollout record handed from the engine to rewards and the learner."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ngrpo.soft_inputs import SoftInputs


@dataclass
class RolloutBatch:
    """Rollouts, rows ordered prompt-major: row i*n + j is sample j of prompt i."""

    prompt_ids: torch.LongTensor  # (N, P) left-padded with the pad id
    prompt_mask: torch.LongTensor  # (N, P) 1 on prompt tokens
    response_ids: torch.LongTensor  # (N, T) right-padded with the pad id
    response_mask: torch.LongTensor  # (N, T) 1 up to and including EOS
    logprobs: torch.Tensor  # (N, T) log softmax(z/temperature) of each sampled token; 0 on padding
    soft_inputs: SoftInputs  # (N, P + T, K) records of the FULL sequence, prompt then response
    mixed: torch.BoolTensor  # (N, T) the input recorded at this response position is mixed
    stats: dict[str, float]  # rollout/* metrics
    prompt_index: torch.LongTensor  # (N,) which prompt each row answers
    truncated: torch.BoolTensor | None = None  # (N,) stopped by max_new_tokens, not by EOS
    eligible: torch.BoolTensor | None = field(default=None, repr=False)  # (N, T) gate could fire

    @property
    def attention_mask(self) -> torch.LongTensor:
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)  # (N, P + T)

    def select(self, rows: torch.Tensor | slice | list[int]) -> RolloutBatch:
        """A subset of rows (e.g. a learner mini-batch); `stats` are shared, not recomputed."""

        def pick(x):
            return None if x is None else x[rows]

        return RolloutBatch(
            prompt_ids=self.prompt_ids[rows], prompt_mask=self.prompt_mask[rows],
            response_ids=self.response_ids[rows], response_mask=self.response_mask[rows],
            logprobs=self.logprobs[rows], soft_inputs=self.soft_inputs.select(rows),
            mixed=self.mixed[rows], stats=self.stats, prompt_index=self.prompt_index[rows],
            truncated=pick(self.truncated), eligible=pick(self.eligible),
        )  # fmt: skip

    def responses(self) -> list[list[int]]:
        """Each row's response ids up to and including EOS."""
        lengths = self.response_mask.sum(-1).tolist()
        return [row[:n] for row, n in zip(self.response_ids.tolist(), lengths, strict=True)]
