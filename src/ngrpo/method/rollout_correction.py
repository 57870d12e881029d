"""The rollout–learner gap: how far the sampling policy is from π_old, and weights correcting it.

The rollout engine records log π_rollout(y_t), the log-probability under which each token was
sampled; the learner scores the same recorded inputs with one full-sequence forward, log π_old. In
fp32 the two are equal (the replay invariant); in bf16 they are not, because one-token decode steps
and a full-sequence forward round differently. Then the tokens were drawn from π_rollout while the
PPO ratio is taken against π_old, and the gap has to be measured and, optionally, corrected.

Measures (`mismatch_metrics`, δ_t = log π_old(y_t) − log π_rollout(y_t) over loss tokens):
    mismatch/logp_abs_mean, mismatch/logp_abs_max      mean and largest |δ_t|
    mismatch/kl_k3                                      KL(π_rollout ‖ π_old) per token, from the
                                                        rollout's own samples: k3 = e^δ − δ − 1
                                                        (Schulman's low-variance estimator)
    mismatch/seq_log_ratio_abs_mean, _abs_max           |Σ_t δ_t| per sequence (the sequence-level
                                                        log importance ratio)
    mismatch/frac_over_0.1                              share of tokens with |δ_t| > 0.1
    mismatch/tokens, mismatch/sequences                 how many were measured (the weights of
                                                        the means when processes are combined)
and, over the positions right after a mixed input alone, the token measures again under
`mismatch/mixed/`. `RolloutBatch.mixed[:, t]` marks that the *input* fed at response position t
was a soft input; the log-probability recorded at t was computed before that input (it scores y_t,
sampled from the logits of the previous input), so the first log-probability that sees a replayed
soft input is the one at t + 1 (`after_mixed`).

Correction (`importance_weights`; verl `algorithm.rollout_correction.rollout_is` /
`rollout_is_threshold`, TRL `vllm_importance_sampling_mode` / `vllm_importance_sampling_clip_max`
/ `_clip_min`; truncated importance sampling as in Yao et al. 2025, "Your Efficient RL Framework
Secretly Brings You Off-Policy RL Training"):
    token level     w_t = π_old(y_t) / π_rollout(y_t) = exp(δ_t)
    sequence level  w_t = exp(Σ_s δ_s) for every token of the sequence
    truncate        clamp(w, floor, cap)        (TIS; no floor by default, as TRL)
    mask            w if floor ≤ w ≤ cap else 0 (MIS: the token, or the whole sequence, is left out)
The policy-gradient term of every token is multiplied by the constant w (the KL and entropy terms
are not, as in verl and TRL), so the update estimates the gradient under π_old although the tokens
came from π_rollout. log w is clamped to [−20, 20] before `exp` (verl's safety bound).

What "left out" means differs between the libraries, and the learner offers both
(`train.rollout_correction_masked`): `keep` (TRL's `*_mask` modes) gives a masked token weight 0
in the policy-gradient term only: it still counts in the loss normaliser and still carries its KL
and entropy terms; `drop` (verl's rejection sampling) removes it from the loss mask,
so it counts nowhere (`masked_tokens`).
"""

from __future__ import annotations

import torch

from ngrpo.method.losses import LOG_RATIO_CLAMP
from ngrpo.utils.errors import NgrpoError

CORRECTIONS = ("none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
MISMATCH_THRESHOLD = 0.1  # nats: `mismatch/frac_over_0.1`
_TOKEN_MEANS = ("logp_abs_mean", "kl_k3", "frac_over_0.1")
MEAN_WEIGHTS = {  # each mean of `mismatch_metrics` -> the count it averages over
    **{f"mismatch/{key}": "mismatch/tokens" for key in _TOKEN_MEANS},
    "mismatch/seq_log_ratio_abs_mean": "mismatch/sequences",
    **{f"mismatch/mixed/{key}": "mismatch/mixed/tokens" for key in _TOKEN_MEANS},
}
"""How `mismatch_metrics` from several processes (or batches) combine: each mean weighted by its
count, the counts summed, the maxima maximal."""
CORRECTION_TOKENS = "rollout_correction/tokens"  # the loss tokens `importance_weights` measured
CORRECTION_WEIGHTS = {
    f"rollout_correction/{key}": CORRECTION_TOKENS
    for key in ("weight_mean", "truncated_frac", "masked_frac")
}  # how `importance_weights`' metrics combine over processes, as MEAN_WEIGHTS


MASKED = ("keep", "drop")  # what a masked token keeps: see the module docstring


def check_correction(mode: str, cap: float, floor: float | None = None) -> None:
    """An `NgrpoError` naming the key when the correction settings are not valid."""
    if mode not in CORRECTIONS:
        raise NgrpoError(
            f"train.rollout_correction must be one of {', '.join(CORRECTIONS)}, got {mode!r}"
        )
    if not cap >= 1.0:
        raise NgrpoError(
            f"train.rollout_correction_cap must be >= 1 (a weight of 1 is never cut), got {cap!r}"
        )
    if floor is not None and not 0.0 <= floor <= 1.0:
        raise NgrpoError(
            "train.rollout_correction_min must be in [0, 1] (a weight of 1 is never cut) or null "
            f"(no lower bound), got {floor!r}"
        )


def importance_weights(
    old_logp: torch.Tensor,
    rollout_logp: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    cap: float,
    floor: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Constant weights (N, T) for the policy-gradient term of each token, and their metrics.

    old_logp, rollout_logp, mask: (N, T). `mode` in `CORRECTIONS` (see the module docstring);
    `none` gives weights of exactly 1 and no metrics. `cap` bounds the weights from above, `floor`
    (None: unbounded) from below. Metrics over masked tokens: `rollout_correction/weight_mean`
    (after truncation or masking) and `rollout_correction/truncated_frac` or
    `rollout_correction/masked_frac` (the share of tokens whose weight was outside the bounds),
    and their count `rollout_correction/tokens` (processes combine the two weighted by it).
    """
    check_correction(mode, cap, floor)
    if mode == "none":
        return torch.ones_like(old_logp), {}
    level, action = mode.split("_")
    mask = mask.to(old_logp.dtype)
    delta = ((old_logp - rollout_logp) * mask).detach()  # (N, T), 0 on padding
    if level == "sequence":
        delta = delta.sum(dim=1, keepdim=True).expand_as(delta)  # (N, T): Σ_s δ_s on every token
    weights = torch.exp(delta.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))  # (N, T)
    low = 0.0 if floor is None else floor
    outside = (weights > cap) | (weights < low)  # (N, T)
    truncate = action == "truncate"
    weights = weights.clamp(min=low, max=cap) if truncate else weights.masked_fill(outside, 0.0)
    tokens = mask.sum().clamp(min=1.0)
    metrics = {
        "rollout_correction/weight_mean": float((weights * mask).sum() / tokens),
        f"rollout_correction/{'truncated' if truncate else 'masked'}_frac": float(
            (outside.to(mask.dtype) * mask).sum() / tokens
        ),
        CORRECTION_TOKENS: float(mask.sum()),
    }
    return weights, metrics


def masked_tokens(weights: torch.Tensor, mode: str) -> torch.Tensor:
    """(N, T) bool: the tokens a `*_mask` mode left out (weight 0); none for the other modes."""
    if not mode.endswith("_mask"):
        return torch.zeros_like(weights, dtype=torch.bool)
    return weights == 0


def mismatch_metrics(
    learner_logp: torch.Tensor,
    rollout_logp: torch.Tensor,
    mask: torch.Tensor,
    mixed: torch.Tensor | None = None,
) -> dict[str, float]:
    """The rollout–learner gap over the tokens in `mask` (N, T) (see the module docstring):
    learner_logp = log π_old, rollout_logp = log π_rollout, `mixed` (N, T) bool the positions
    whose input was mixed (`RolloutBatch.mixed`): `mismatch/mixed/*` measures the positions right
    after them (`after_mixed`). Empty masks give zeros."""
    valid = mask.bool()
    delta = (learner_logp.detach().float() - rollout_logp.detach().float()).masked_fill(~valid, 0)
    metrics = _token_measures(delta, valid, "mismatch/")
    rows = valid.any(dim=1)  # (N,) sequences with at least one measured token
    seq = delta.sum(dim=1)[rows].abs()  # (n,)
    metrics["mismatch/seq_log_ratio_abs_mean"] = float(seq.mean()) if seq.numel() else 0.0
    metrics["mismatch/seq_log_ratio_abs_max"] = float(seq.max()) if seq.numel() else 0.0
    metrics["mismatch/sequences"] = float(seq.numel())
    if mixed is not None:
        metrics.update(_token_measures(delta, valid & after_mixed(mixed), "mismatch/mixed/"))
    return metrics


def after_mixed(mixed: torch.Tensor) -> torch.Tensor:
    """(N, T) bool: the response positions whose log-probability is the first to see a mixed input.

    `mixed` (N, T) marks the positions whose *input* was mixed; the input at t produces the logits
    of t + 1, so the marks move one position right (a mix at the last position scores nothing)."""
    after = torch.zeros_like(mixed, dtype=torch.bool)  # (N, T)
    after[:, 1:] = mixed[:, :-1].bool()
    return after


def _token_measures(delta: torch.Tensor, valid: torch.Tensor, prefix: str) -> dict[str, float]:
    d = delta[valid]  # (M,)
    if d.numel() == 0:
        return {f"{prefix}{key}": 0.0 for key in (*_TOKEN_MEANS, "logp_abs_max", "tokens")}
    clamped = d.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return {
        f"{prefix}tokens": float(d.numel()),
        f"{prefix}logp_abs_mean": float(d.abs().mean()),
        f"{prefix}logp_abs_max": float(d.abs().max()),
        f"{prefix}kl_k3": float((torch.exp(clamped) - clamped - 1.0).mean()),
        f"{prefix}frac_over_0.1": float((d.abs() > MISMATCH_THRESHOLD).float().mean()),
    }
