"""Sampling math of the rollout engine: warping, the sampler, log-probabilities, padding.

Sampling at step t: logits z_t (fp32) -> divide by temperature -> top-k (ties at the k-th value are
kept) -> top-p (smallest prefix of the sorted distribution with mass >= top_p) -> softmax = p_t ->
an exponential race (`argmax p / Exp(1)`) with the engine's generator. `temperature = 0` means
greedy (argmax).

Recorded `logprobs`: log softmax(z_t / temperature) at the sampled token, i.e. the
temperature-scaled policy *before* top-k/top-p truncation (temperature 0 records temperature 1).
This is the distribution the learner differentiates (as in TRL and verl); with the training
defaults (top_k = 0, top_p = 1) it is exactly the sampling distribution. Mixing weights, in
contrast, use the truncated p_t (see `ngrpo.method.exploration`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ngrpo.utils.errors import NgrpoError


@dataclass
class SamplingParams:
    """How responses are sampled (TRL names: num_generations = n, max_completion_length)."""

    n: int = 1  # responses per prompt
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # 1 = off
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 256

    def validate(self) -> None:
        if self.n < 1:
            raise NgrpoError(f"sampling.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise NgrpoError(
                f"sampling.temperature must be >= 0 (0 = greedy), got {self.temperature}"
            )
        if not 0.0 < self.top_p <= 1.0:
            raise NgrpoError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise NgrpoError(f"sampling.top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.max_new_tokens < 1:
            raise NgrpoError(f"sampling.max_new_tokens must be >= 1, got {self.max_new_tokens}")


def warp_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, then top-k, then top-p: logits (B, V) -> warped logits with -inf outside."""
    scaled = logits / temperature if temperature > 0 else logits  # (B, V)
    vocab = scaled.shape[-1]
    if 0 < top_k < vocab:
        kth = scaled.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = scaled.sort(dim=-1, descending=True)  # (B, V)
        sorted_probs = sorted_logits.softmax(-1)
        mass_before = sorted_probs.cumsum(-1) - sorted_probs  # (B, V)
        drop_sorted = mass_before >= top_p  # the first token always stays (mass_before = 0)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # (B, V)
        scaled = scaled.masked_fill(drop, float("-inf"))
    return scaled


def sample_tokens(
    warped: torch.Tensor, temperature: float, generator: torch.Generator
) -> tuple[torch.LongTensor, torch.Tensor]:
    """Sample from warped logits (B, V): token ids (B,) and the distribution p_t (B, V)."""
    if temperature == 0:
        tokens = warped.argmax(-1)  # (B,)
        return tokens, torch.nn.functional.one_hot(tokens, warped.shape[-1]).to(warped.dtype)
    probs = warped.softmax(-1)  # (B, V)
    # Exponential race: argmax p_v / E_v with E_v ~ Exp(1) picks v with probability p_v. Same
    # distribution as torch.multinomial, cheaper, and free of a host sync on GPU (as in vLLM).
    race = torch.empty_like(probs).exponential_(generator=generator)  # (B, V)
    return (probs / race).argmax(-1), probs


def token_logprobs(
    logits: torch.Tensor, tokens: torch.LongTensor, temperature: float
) -> torch.Tensor:
    """log softmax(logits / temperature) at `tokens`: logits (..., V), tokens (...) -> (...)."""
    scale = temperature if temperature > 0 else 1.0
    logp = torch.log_softmax(logits.float() / scale, dim=-1)  # (..., V)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def position_ids_from_mask(mask: torch.Tensor) -> torch.LongTensor:
    """Position ids for a left-padded mask (B, L): 0, 1, ... over real tokens, 0 on left padding."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)  # (B, L)


def left_pad(
    prompts: list[list[int]], pad_token_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Token lists -> ids (B, P) left-padded with `pad_token_id` and mask (B, P)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
    return ids.to(device), mask.to(device)
