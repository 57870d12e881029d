"""The GRPO loss, as pure tensor functions with plain arguments.

Shapes: N sequences (responses) of T response positions; `mask` (N, T) is 1 on real response tokens
and 0 on padding. Every function here is a plain function of tensors and numbers: the training loop
reads the config and passes values in.

Formulas and their sources
--------------------------
Advantages (DeepSeekMath, Shao et al. 2024, eq. for outcome supervision): for the G responses of one
prompt with rewards r_1..r_G,  A_i = (r_i − mean(r)) / (std(r) + 1e-6), the same for every token of
response i. With `scale=False` only the mean is removed (Dr. GRPO, Liu et al. 2025, argue that the
std division biases towards too easy and too hard prompts).

Clipped surrogate (PPO, Schulman et al. 2017; asymmetric clip from DAPO, Yu et al. 2025):
    ρ_t = exp(log π_θ(y_t) − log π_old(y_t))
    ℓ_t = −min(ρ_t A, clip(ρ_t, 1 − ε_low, 1 + ε_high) A)
`ε_high > ε_low` ("clip-higher") lets low-probability tokens with positive advantage grow faster.
Dual clip (Ye et al. 2020; verl `compute_policy_loss`, `clip_ratio_c`, 3.0 in the N-GRPO release),
for A < 0 only: ℓ_t = min(max(−ρA, −clip(ρ)A), −c·A), which bounds the loss of a token whose ratio
has grown far above 1 while its advantage is negative; A ≥ 0 is unchanged. Off by default.

Sequence-level ratio (GSPO, Zheng et al. 2025, "Group Sequence Policy Optimization", eq. 7 and the
GSPO-token form eq. 13):
    s_i(θ) = exp( (1/|y_i|) Σ_t log(π_θ(y_i,t) / π_old(y_i,t)) )
    s_i,t(θ) = sg[s_i(θ)] · π_θ(y_i,t) / sg[π_θ(y_i,t)]
so every token of response i carries the value s_i and the gradient s_i · ∇log π_θ(y_i,t); clipping
is applied to s_i. With `seq-mean-token-mean` aggregation this is exactly GSPO's objective
(1/G) Σ_i min(s_i A_i, clip(s_i) A_i); with `token-mean` the sequences are weighted by length.
GSPO's own clip ranges are tiny (ε_low = 3e-4, ε_high = 4e-4): the ε of token-level PPO is far too
wide for a sequence ratio.

KL to the reference policy, per token, with δ = log π_ref − log π_θ (Schulman, "Approximating KL
Divergence", 2020, http://joschu.net/blog/kl-approx.html):
    k1 = −δ = log π_θ − log π_ref           (unbiased, high variance, can be negative)
    k2 = ½ δ²                               (biased, low variance)
    k3 = exp(δ) − δ − 1                     (unbiased, low variance, ≥ 0; verl's `low_var_kl`)
The KL term is added to the loss (DeepSeekMath), never to the reward.

Aggregation of the per-token loss ℓ (N, T) over the batch (names from verl; Dr. GRPO, Liu et al.
2025, discuss the length bias of each):
    token-mean:          Σ_i Σ_t ℓ_it / Σ_i |y_i|              (DAPO; verl's default)
    seq-mean-token-mean: (1/N) Σ_i (1/|y_i|) Σ_t ℓ_it          (the original GRPO)
    seq-mean-token-sum:  (1/N) Σ_i Σ_t ℓ_it
The denominator can be given explicitly (`normalizer`) so that gradient accumulation over
micro-batches reproduces the mini-batch loss exactly: compute it once for the whole mini-batch with
`loss_normalizer(mask, mode)` and pass it to every micro-batch.

Deviations, all taken from verl (the authors' released code is built on it)
---------------------------------------------------------------------------
- log-ratios are clamped to [−20, 20] before `exp`, so one badly off-policy token cannot overflow;
  k3 is additionally clamped to [−10, 10] (verl's `low_var_kl`). Both clamps are inactive in normal
  training (|δ| ≪ 1) and change nothing at ratio 1.
- the std in the advantage is the sample std (Bessel-corrected, `torch.std` default), as in verl and
  TRL; DeepSeekMath does not say which. A group of size 1 gets advantage 0 (verl sets its std to 1).
- Dr. GRPO's exact "divide by a constant max length" aggregation is not provided;
  `seq-mean-token-sum` differs from it by that constant factor only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ngrpo.utils.errors import NgrpoError

LOG_RATIO_CLAMP = 20.0  # |log ρ| bound before exp (verl)
K3_CLAMP = 10.0  # |k3| bound (verl low_var_kl)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over positions where `mask` is 1 (0 when the mask is empty)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


# ---------------------------------------------------------------------------------------------
# Advantages
# ---------------------------------------------------------------------------------------------


def group_advantages(
    rewards: torch.Tensor, scale: bool = True, eps: float = 1e-6, unbiased: bool = True
) -> torch.Tensor:
    """Group-relative advantages: (P, G) rewards of G responses per prompt -> (P, G) advantages.

    A = (r − mean_g r) / (std_g r + eps) when `scale`, else r − mean_g r. The std is the sample
    (Bessel-corrected) std by default, as verl and TRL compute it; `unbiased=False` gives the
    population std. Groups whose rewards are all equal get advantage 0 either way.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (P, G), got shape {tuple(rewards.shape)}")
    rewards = rewards.float()
    centred = rewards - rewards.mean(dim=1, keepdim=True)  # (P, G)
    if not scale:
        return centred
    if rewards.shape[1] == 1:  # one sample: no spread to measure; the centred value is already 0
        return centred
    std = rewards.std(dim=1, keepdim=True, unbiased=unbiased)  # (P, 1)
    return centred / (std + eps)  # (P, G)


# ---------------------------------------------------------------------------------------------
# KL estimators (registry)
# ---------------------------------------------------------------------------------------------


def _kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return logp - ref_logp


def _kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logp - ref_logp) ** 2


def _kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    delta = (ref_logp - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return (torch.exp(delta) - delta - 1.0).clamp(-K3_CLAMP, K3_CLAMP)


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": _kl_k1,
    "k2": _kl_k2,
    "k3": _kl_k3,
}
# Other names for the same estimators: verl's `kl_loss_type` values.
KL_ALIASES: dict[str, str] = {"kl": "k1", "mse": "k2", "low_var_kl": "k3"}


def resolve_kl_estimator(name: str) -> str:
    """Canonical KL estimator name (`k1`, `k2`, `k3`) for a name or a verl alias."""
    canonical = KL_ALIASES.get(name, name)
    if canonical not in KL_ESTIMATORS:
        choices = ", ".join([*KL_ESTIMATORS, *(f"{a} (= {c})" for a, c in KL_ALIASES.items())])
        raise NgrpoError(f"unknown KL estimator {name!r}; choose one of {choices}")
    return canonical


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token KL estimate between the policy and the reference, from their log-probs (N, T)."""
    return KL_ESTIMATORS[resolve_kl_estimator(kind)](logp, ref_logp)  # (N, T)


# ---------------------------------------------------------------------------------------------
# Importance ratios (registry) and the clipped surrogate
# ---------------------------------------------------------------------------------------------


def _token_log_ratio(
    logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    return logp - old_logp  # (N, T)


def _sequence_log_ratio(
    logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    # GSPO-token: log s_i,t = sg[log s_i] + log π_θ(y_t) − sg[log π_θ(y_t)]; its value is log s_i on
    # every token, its gradient ∇log π_θ(y_t).
    mask = mask.to(logp.dtype)
    lengths = mask.sum(dim=1).clamp(min=1.0)  # (N,)
    seq_log_ratio = ((logp - old_logp) * mask).sum(dim=1) / lengths  # (N,)
    return logp - logp.detach() + seq_log_ratio.detach()[:, None]  # (N, T)


IMPORTANCE_LEVELS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "token": _token_log_ratio,
    "sequence": _sequence_log_ratio,
}


def _check_choice(kind: str, name: str, registry: dict) -> None:
    if name not in registry:
        raise NgrpoError(f"unknown {kind} {name!r}; choose one of {', '.join(registry)}")


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    level: str = "token",
    clip_ratio_c: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate per token.

    logp, old_logp, mask: (N, T); advantages: (N,) per sequence or (N, T) per token.
    `level` is "token" (PPO/GRPO ratio per token) or "sequence" (GSPO: the length-normalised
    sequence ratio on every token, with GSPO's stop-gradient form).
    Returns the per-token loss (N, T) (not masked, not aggregated) and metrics over masked tokens:
    `actor/clip_frac` (the clipped branch is active), `actor/clip_frac_low` (ρ < 1 − ε_low with
    A < 0), `actor/clip_frac_high` (ρ > 1 + ε_high with A > 0), `actor/ratio_mean|min|max`.
    `clip_ratio_c` (> 1, or None = off): verl's dual clip for A < 0; adds
    `loss/pg_clipfrac_lower`, the fraction of tokens where it binds (A < 0 and the clipped loss
    exceeds −c·A), as verl logs it.
    """
    _check_choice("importance sampling level", level, IMPORTANCE_LEVELS)
    if advantages.dim() == 1:
        advantages = advantages[:, None]  # (N, 1), broadcast over tokens
    log_ratio = IMPORTANCE_LEVELS[level](logp, old_logp, mask)  # (N, T)
    ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))  # (N, T)
    unclipped = -advantages * ratio  # (N, T)
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)  # (N, T)
    loss = torch.maximum(unclipped, clipped)  # (N, T)
    dual_binds = None
    if clip_ratio_c is not None:
        if not clip_ratio_c > 1.0:
            raise NgrpoError(f"train.clip_ratio_c must be > 1 or null, got {clip_ratio_c!r}")
        capped = -advantages * clip_ratio_c  # (N, 1) or (N, T)
        dual_binds = (advantages < 0) & (loss > capped)  # (N, T)
        loss = torch.where(advantages < 0, torch.minimum(loss, capped), loss)  # (N, T)

    with torch.no_grad():
        valid = mask.bool()
        r = ratio.detach()[valid]
        one = torch.ones((), device=ratio.device)
        values = {
            "actor/clip_frac": masked_mean((clipped > unclipped).float(), mask),
            "actor/clip_frac_low": masked_mean(
                ((ratio < 1.0 - clip_low) & (advantages < 0)).float(), mask
            ),
            "actor/clip_frac_high": masked_mean(
                ((ratio > 1.0 + clip_high) & (advantages > 0)).float(), mask
            ),
            "actor/ratio_mean": r.mean() if r.numel() else one,
            "actor/ratio_min": r.min() if r.numel() else one,
            "actor/ratio_max": r.max() if r.numel() else one,
        }
        if dual_binds is not None:
            values["loss/pg_clipfrac_lower"] = masked_mean(dual_binds.float(), mask)
        metrics = _to_floats(values)
    return loss, metrics


def _to_floats(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """0-dim tensors as floats, read from the device in one transfer (one host sync, not one per
    metric: on a GPU every sync stalls the queue of kernels behind it)."""
    floats = torch.stack([v.float() for v in values.values()]).tolist()
    return dict(zip(values, floats, strict=True))


# ---------------------------------------------------------------------------------------------
# Aggregation (registry)
# ---------------------------------------------------------------------------------------------
# Each mode is a pair of functions of (loss (N, T), mask (N, T)): the numerator (a scalar tensor)
# and the default denominator (a count). `aggregate` divides one by the other, or by an explicit
# normaliser computed over a larger batch.


def _sum_tokens(loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (loss * mask).sum()


def _sum_of_sequence_means(loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    lengths = mask.sum(dim=1).clamp(min=1.0)  # (N,)
    return ((loss * mask).sum(dim=1) / lengths).sum()


def _count_tokens(mask: torch.Tensor) -> float:
    return float(mask.sum().item())


def _count_sequences(mask: torch.Tensor) -> float:
    return float(mask.shape[0])


AGGREGATIONS: dict[str, tuple[Callable, Callable]] = {
    "token-mean": (_sum_tokens, _count_tokens),
    "seq-mean-token-mean": (_sum_of_sequence_means, _count_sequences),
    "seq-mean-token-sum": (_sum_tokens, _count_sequences),
}
# TRL's `loss_type` values that are one of ours ("dr_grpo" is not: it divides by a constant).
AGGREGATION_ALIASES: dict[str, str] = {
    "grpo": "seq-mean-token-mean",
    "bnpo": "token-mean",
    "dapo": "token-mean",
}


def resolve_aggregation(name: str) -> str:
    """Canonical aggregation mode for a name or a TRL `loss_type` alias."""
    canonical = AGGREGATION_ALIASES.get(name, name)
    if canonical not in AGGREGATIONS:
        choices = ", ".join(
            [*AGGREGATIONS, *(f"{a} (= {c})" for a, c in AGGREGATION_ALIASES.items())]
        )
        raise NgrpoError(f"unknown loss aggregation {name!r}; choose one of {choices}")
    return canonical


def loss_normalizer(mask: torch.Tensor, mode: str = "token-mean") -> float:
    """The denominator `mode` uses for this mask: the number of tokens or of sequences (≥ 1).

    Compute it over a whole mini-batch and pass it as `normalizer` to each micro-batch's
    `aggregate` so that the accumulated gradient equals the mini-batch gradient.
    """
    return max(AGGREGATIONS[resolve_aggregation(mode)][1](mask), 1.0)


def aggregate(
    loss: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token-mean",
    normalizer: float | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss (N, T) to a scalar with aggregation `mode` (see module docstring)."""
    numerator, count = AGGREGATIONS[resolve_aggregation(mode)]
    mask = mask.to(loss.dtype)
    denominator = max(count(mask), 1.0) if normalizer is None else normalizer
    return numerator(loss, mask) / denominator


# ---------------------------------------------------------------------------------------------
# Log-probs and entropy from logits
# ---------------------------------------------------------------------------------------------


def logprobs_from_logits(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log softmax(logits / temperature)[labels]: (N, T, V) logits, (N, T) ids -> (N, T)."""
    logp_all = F.log_softmax(logits.float() / temperature, dim=-1)  # (N, T, V)
    return logp_all.gather(-1, labels[..., None]).squeeze(-1)  # (N, T)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last axis: (..., V) -> (...). Divide by τ before."""
    logits = logits.float()
    logp = F.log_softmax(logits, dim=-1)  # (..., V)
    return -(logp.exp() * logp).sum(dim=-1)  # (...)


# ---------------------------------------------------------------------------------------------
# The composed GRPO loss
# ---------------------------------------------------------------------------------------------


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logp: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    beta: float = 0.0,
    kl_estimator: str = "k3",
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_ratio_c: float | None = None,
    level: str = "token",
    loss_type: str = "token-mean",
    entropy_coef: float = 0.0,
    normalizer: float | None = None,
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """pg + beta · KL − entropy_coef · entropy, each aggregated with `loss_type`.

    logp, old_logp, mask, ref_logp, entropy: (N, T); advantages: (N,) or (N, T).
    `ref_logp` is required when beta > 0, `entropy` (per-token entropy of the policy, e.g. from
    `entropy_from_logits`) when entropy_coef > 0. `normalizer`: see `aggregate`. `is_weights`
    (N, T): constant rollout-correction weights multiplying each token's policy-gradient term
    (`ngrpo.method.rollout_correction.importance_weights`; None: 1).
    Returns the scalar loss to backpropagate and metrics aggregated over this call alone with
    `loss_type` (the local denominator, whatever `normalizer` is): `loss/total` (equal to the loss
    when `normalizer` is None), `loss/pg`, `loss/kl` (when `ref_logp` is given, also at beta = 0),
    `actor/entropy` (when `entropy` is given), and `policy_loss`'s metrics.
    """
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp (the frozen reference policy's log-probs)")
    if entropy_coef != 0 and entropy is None:
        raise ValueError("entropy_coef != 0 needs the per-token entropy")
    mode = resolve_aggregation(loss_type)

    pg_tokens, metrics = policy_loss(
        logp, old_logp, advantages, mask, clip_low, clip_high, level, clip_ratio_c
    )
    if is_weights is not None:
        pg_tokens = pg_tokens * is_weights.detach()  # (N, T)
    terms = [(1.0, pg_tokens, "loss/pg")]  # (coefficient, per-token value (N, T), metric name)
    if ref_logp is not None:
        terms.append((beta, kl_penalty(logp, ref_logp, kl_estimator), "loss/kl"))
    if entropy is not None:
        terms.append((-entropy_coef, entropy, "actor/entropy"))

    loss = torch.zeros((), dtype=torch.float32, device=logp.device)
    local: dict[str, torch.Tensor] = {}
    for coef, tokens, name in terms:
        if coef != 0:
            loss = loss + coef * aggregate(tokens, mask, mode, normalizer)
        with torch.no_grad():
            local[name] = aggregate(tokens.detach(), mask, mode)
    local_floats = _to_floats(local)
    metrics.update(local_floats)
    metrics["loss/total"] = sum(coef * local_floats[name] for coef, _, name in terms)
    return loss, metrics
