"""Exploration strategies: which soft input replaces `e(y_t)` at a mixed decoding step.

DESIGN section 2. Each strategy is one small pure function in `STRATEGIES`, called for the whole
batch at every step; the rollout engine keeps its answer only on the rows whose gate fired
(`mixing_gate`) and records the mixture as a `SoftInputs` row. A strategy returns a `Mixture`:
candidate ids (B, K), weights (B, K) and optional additive noise (B, d).

- `none`: plain GRPO; the input is `e(y_t)`.
- `neighbor` (N-GRPO): anchor `a_t = argmax p_t` (option `anchor="sampled"`: `y_t`), candidates
  `C_t = {a_t} ∪` its `mix_top_k − 1` nearest tokens in the searched table (`neighbor_table`:
  the input embedding, or the output projection as in the release; the mixture is always built
  from input-embedding rows). Weights (`neighbor_weights`, see `candidate_weights`):
  `policy` (the paper's text): `p_t` renormalised over `C_t`; `release` (the authors' code):
  `w_v ∝ exp(q_t(v)/τ)` on `C_t`. `p_t` is the warped distribution (temperature, then top-k, then
  top-p) the token is sampled from, so a neighbour that top-k/top-p truncation removed has
  probability 0 and gets weight 0 under both readings (it stays in the record, contributing
  nothing). The anchor always has positive probability (the argmax survives every truncation, a
  sampled token was possible), so the weights are well defined.
- `topk`: the top-`mix_top_k` tokens of the raw logits `z_t`, weights `softmax(z/mix_temperature)`
  over them (the rollout temperature and truncation do not enter: this is the STHT recipe). With
  `neighbor_weights: release` (applies to `topk`, `topk_gumbel` and `gaussian`, as the released
  sampler computes all three from the same probabilities): `w_v ∝ exp(q_t(v)/(τ·mix_temperature))`
  over the k tokens, truncated ones weighted 0. `orthogonal` and the probe's `shift_*` strategies
  ignore `neighbor_weights`.
- `topk_gumbel`: as `topk`, the k tokens chosen by `z/mix_temperature + Gumbel noise`.
- `gaussian` (STHT): the `topk` mixture plus isotropic noise with standard deviation
  `noise_scale × RMS(mixture)` (RMS over the d coordinates of each row).
- `orthogonal`: our reading of the paper's one-line description (no reference code): the input is
  `e(a) + Σ_j w_j · ξ_j · ‖e(c_j) − e(a)‖ · u_j` over the other top-k candidates `c_j`, where `u_j`
  is the unit component of `e(c_j) − e(a)` orthogonal to `e(a)`, `w_j` its `topk` weight and
  `ξ_j ~ N(0, 1)`. Recorded as ids = top-k, weights = (1, 0, ...), noise = the sum.
- `shift_gaussian`, `shift_neighbor`: the semantic-consistency probe's matched perturbations (not in
  the paper's method; `ngrpo.study.probe`), both at an exact relative shift `s = noise_scale` from
  the anchor `a` (option `anchor`, as for `neighbor`): `shift_gaussian` feeds `e(a) + s‖e(a)‖·u`
  with `u` uniform on the unit sphere (recorded as noise); `shift_neighbor` feeds
  `(1 − w)·e(a) + w·e(n)` for the cosine-nearest neighbour `n` of `a`, with
  `w = min(1/2, s‖e(a)‖ / ‖e(n) − e(a)‖)` (recorded as ids (a, n), weights (1 − w, w)). The cap
  keeps the input closer to `a` than to `n`; where it binds, the shift is below `s`. With
  `mix_top_k = 1` there is no slot for `n` and `shift_neighbor` feeds `e(a)`.

Gate (all must hold): a training rollout, strategy != none, the sequence has not emitted the
answer marker (including at this step) nor EOS, and a per-sequence per-step Bernoulli(mix_rate)
draw succeeds, and, with `entropy_threshold` set, the entropy of `p_t` is at least the threshold
(`mix_rate = 1` makes that a pure entropy gate). The combination mixes a chosen share of the
positions where the policy hesitates (on the embedded task: mostly between surface forms).
All random draws of exploration use their own generator, so turning mixing on never changes the
random stream that samples tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ngrpo.method.neighbors import SIMILARITIES, bruteforce_neighbors
from ngrpo.utils.errors import NgrpoError

ANCHORS = ("greedy", "sampled")
NEIGHBOR_WEIGHTS = ("policy", "release")
NEIGHBOR_TABLES = ("input", "output")
MIX_RATE_SCHEDULES = ("constant", "linear")


@dataclass
class ExplorationConfig:
    """Exploration at rollout time (DESIGN section 2). Defaults: the authors' N-GRPO 1.5B run."""

    strategy: str = "none"  # a key of STRATEGIES: none, neighbor, gaussian, topk, ...
    mix_top_k: int = 2  # candidates per mixed input, anchor included
    mix_rate: float = 0.1  # per-sequence, per-step probability that a position is mixed
    # constant: mix_rate at every training step | linear: mix_rate · (1 − s / steps) at the step
    # that follows s finished steps, decaying to ~0 over `train.steps` (`scheduled_mix_rate`)
    mix_rate_schedule: str = "constant"
    # if set: only positions with entropy(p_t) >= this can mix, each with probability mix_rate
    # (mix_rate = 1: every such position, a pure entropy gate)
    entropy_threshold: float | None = None
    metric: str = "cosine"  # neighbour metric: cosine | dot | l1 | l2
    anchor: str = "greedy"  # neighbor anchor: greedy (argmax of p_t, authors' code) | sampled (y_t)
    answer_start: str = "</think>"  # no mixing once a sequence has emitted this (tokenised) marker
    mix_temperature: float = 1.0  # temperature of the softmax weighting in topk-style baselines
    # gaussian: noise std as a fraction of the mixture's RMS (so ‖noise‖ ≈ noise_scale·‖mixture‖);
    # shift_gaussian / shift_neighbor: the exact relative shift ‖ẽ − e(a)‖ / ‖e(a)‖
    noise_scale: float = 0.33
    # policy: p_t renormalised over the candidates (paper text) | release: softmax of the warped
    # probabilities over the candidates (authors' code); see `candidate_weights`
    neighbor_weights: str = "policy"
    # table searched for neighbours: input (embedding) | output (lm_head, as the authors' code);
    # the mixture is always built from input-embedding rows
    neighbor_table: str = "input"

    @property
    def enabled(self) -> bool:
        return self.strategy != "none"

    def validate(self, vocab_size: int | None = None) -> None:
        """Raise `NgrpoError` naming the offending key and the allowed values."""
        for key, noun, value, allowed in (
            ("strategy", "strategy", self.strategy, STRATEGIES),
            ("metric", "metric", self.metric, SIMILARITIES),
            ("anchor", "anchor", self.anchor, ANCHORS),
            ("neighbor_weights", "value", self.neighbor_weights, NEIGHBOR_WEIGHTS),
            ("neighbor_table", "value", self.neighbor_table, NEIGHBOR_TABLES),
            ("mix_rate_schedule", "schedule", self.mix_rate_schedule, MIX_RATE_SCHEDULES),
        ):
            if value not in allowed:
                raise NgrpoError(
                    f"exploration.{key}: unknown {noun} {value!r}; "
                    f"choose one of {', '.join(allowed)}"
                )
        upper = "the vocabulary size" if vocab_size is None else str(vocab_size)
        if (
            not isinstance(self.mix_top_k, int)
            or self.mix_top_k < 1
            or (vocab_size is not None and self.mix_top_k > vocab_size)
        ):
            raise NgrpoError(
                f"exploration.mix_top_k must be an integer in [1, {upper}], got {self.mix_top_k!r}"
            )
        if not 0.0 <= self.mix_rate <= 1.0:
            raise NgrpoError(f"exploration.mix_rate must be in [0, 1], got {self.mix_rate!r}")
        if self.entropy_threshold is not None and self.entropy_threshold < 0:
            raise NgrpoError(
                "exploration.entropy_threshold must be >= 0 or null, "
                f"got {self.entropy_threshold!r}"
            )
        if self.mix_temperature <= 0:
            raise NgrpoError(
                f"exploration.mix_temperature must be > 0, got {self.mix_temperature!r}"
            )
        if self.noise_scale < 0:
            raise NgrpoError(f"exploration.noise_scale must be >= 0, got {self.noise_scale!r}")
        if self.enabled and not self.answer_start.strip():
            raise NgrpoError(
                "exploration.answer_start must be a non-empty marker (e.g. '</think>')"
            )


def scheduled_mix_rate(cfg: ExplorationConfig, done_steps: int, total_steps: int) -> float:
    """The mix rate of the training step that follows `done_steps` finished steps of
    `total_steps`: `mix_rate` (schedule `constant`), or `mix_rate · (1 − done / total)` (`linear`:
    the full rate at the first step, `mix_rate / total` at the last, 0 from `total` on)."""
    if cfg.mix_rate_schedule == "constant" or total_steps <= 0:
        return cfg.mix_rate
    return cfg.mix_rate * max(0.0, 1.0 - done_steps / total_steps)


def answer_start_ids(tokenizer, marker: str) -> list[int]:
    """Token ids of the answer-start marker; an error if it tokenises to nothing."""
    ids = tokenizer(marker, add_special_tokens=False)["input_ids"] if marker else []
    if not ids:
        raise NgrpoError(
            f"exploration.answer_start {marker!r} tokenises to nothing; "
            "give a marker the tokenizer knows (default '</think>')"
        )
    return list(ids)


@dataclass
class Mixture:
    """What one strategy proposes for every row of a decoding step."""

    ids: torch.LongTensor  # (B, K)
    weights: torch.Tensor  # (B, K) fp32
    noise: torch.Tensor | None = None  # (B, d)


@dataclass
class StepView:
    """What a strategy may look at for one decoding step (tensors and callables, no config)."""

    logits: torch.Tensor  # (B, V) raw logits z_t, fp32
    probs: torch.Tensor  # (B, V) warped sampling distribution p_t
    sampled: torch.LongTensor  # (B,) y_t
    table: torch.Tensor  # (V, d) input-embedding weights (detached): the mixture's rows
    neighbors: Callable[[torch.LongTensor], torch.LongTensor] | None  # (B,) -> (B, >= k-1)
    generator: torch.Generator  # exploration randomness


def plain(ids: torch.LongTensor, k: int = 1) -> Mixture:
    """The plain record ([y, y, ...], [1, 0, ...]) for each row."""
    cand = ids.unsqueeze(-1).expand(-1, k).contiguous()  # (B, K)
    weights = torch.zeros(cand.shape, dtype=torch.float32, device=ids.device)  # (B, K)
    weights[:, 0] = 1.0
    return Mixture(cand, weights)


def _renormalised(probs: torch.Tensor, ids: torch.LongTensor) -> torch.Tensor:
    p = probs.gather(-1, ids)  # (B, K)
    return p / p.sum(-1, keepdim=True)


def release_weights(
    logits: torch.Tensor,
    probs: torch.Tensor,
    ids: torch.LongTensor,
    temperature: float,
    mix_temperature: float = 1.0,
) -> torch.Tensor:
    """The authors' released candidate weights: `w_v ∝ exp(q(v) / (τ·mix_temperature))` on the
    candidates `ids` (B, K), 0 for candidates that top-k/top-p truncation removed.

    logits (B, V) raw z_t; probs (B, V) the warped sampling distribution p_t (only its zeros are
    used: they mark truncated tokens); `q = softmax(z/τ)` over the whole vocabulary, before
    truncation; τ = `temperature` (0, greedy, counts as 1). Returns (B, K) fp32 summing to 1.

    What the release does (ZJUSCL/N-GRPO, patched sglang `Sampler.forward`): the logits tensor is
    overwritten in place with `q = softmax(z/τ)`; the mixing block reads that tensor back as
    "logits", divides by τ again, masks tokens outside top-k / top-p with −inf, and takes a second
    softmax over the vocabulary; the candidates' entries are then renormalised. So truncated
    candidates are masked (exp(−inf) = 0, not exp(0) = 1), τ enters twice (once inside q, once
    dividing q), and the neighbour strategy has no mix_temperature (pass 1) while its top-k
    strategies divide once more by mix_temperature. One deviation: the release's top-p mask is
    computed on the second softmax (nearly flat, so it removes almost nothing), here truncation is
    the sampler's own (`p_t = 0`); with top_p = 1 and top_k = 0 (the released settings) the two
    agree exactly. Example (τ = 1): q = [0.998, 0.002, 0, ...] on candidates (0, 1) gives
    `[e^0.998, e^0.002] / (e^0.998 + e^0.002)` ≈ [0.730, 0.270].
    """
    tau = temperature if temperature > 0 else 1.0
    q = torch.softmax(logits.float() / tau, dim=-1).gather(-1, ids)  # (B, K)
    scores = (q / (tau * mix_temperature)).masked_fill(probs.gather(-1, ids) <= 0, float("-inf"))
    return torch.softmax(scores, dim=-1)  # (B, K)


def candidate_weights(
    view: StepView,
    ids: torch.LongTensor,
    mode: str,
    temperature: float,
    mix_temperature: float | None = None,
) -> torch.Tensor:
    """Weights (B, K) of the candidates `ids` (B, K) under `neighbor_weights` = `mode`.

    `policy`: for the neighbour strategy (`mix_temperature` None) p_t renormalised over the
    candidates; for the top-k family `softmax(z/mix_temperature)` over them. `release`:
    `release_weights` (mix_temperature 1 for the neighbour strategy)."""
    if mode == "release":
        mt = 1.0 if mix_temperature is None else mix_temperature
        return release_weights(view.logits, view.probs, ids, temperature, mt)
    if mix_temperature is None:
        return _renormalised(view.probs, ids)
    return _topk_softmax(view.logits, ids, mix_temperature)


def _topk_softmax(logits: torch.Tensor, ids: torch.LongTensor, temperature: float) -> torch.Tensor:
    return torch.softmax(logits.gather(-1, ids) / temperature, dim=-1)  # (B, K)


def _none(view: StepView, k: int, **_) -> Mixture:
    return plain(view.sampled, k)


def neighbor_anchors(probs: torch.Tensor, sampled: torch.LongTensor, anchor: str) -> torch.Tensor:
    """The anchor a_t of every row (B,): the most probable token under p_t (`greedy`, the
    authors' code) or the sampled y_t (`sampled`)."""
    return probs.argmax(-1) if anchor == "greedy" else sampled


def _neighbor(
    view: StepView, k: int, anchor: str = "greedy", weights: str = "policy",
    temperature: float = 1.0, **_,
) -> Mixture:  # fmt: skip
    anchors = neighbor_anchors(view.probs, view.sampled, anchor)  # (B,)
    ids = anchors.unsqueeze(-1)  # (B, 1)
    if k > 1:
        ids = torch.cat([ids, view.neighbors(anchors)[:, : k - 1]], dim=-1)  # (B, K)
    return Mixture(ids, candidate_weights(view, ids, weights, temperature))


def _topk(
    view: StepView, k: int, mix_temperature: float = 1.0, weights: str = "policy",
    temperature: float = 1.0, **_,
) -> Mixture:  # fmt: skip
    ids = view.logits.topk(k, dim=-1).indices  # (B, K)
    return Mixture(ids, candidate_weights(view, ids, weights, temperature, mix_temperature))


def _topk_gumbel(
    view: StepView, k: int, mix_temperature: float = 1.0, weights: str = "policy",
    temperature: float = 1.0, **_,
) -> Mixture:  # fmt: skip
    scaled = view.logits / mix_temperature  # (B, V)
    exp_noise = torch.empty_like(scaled).exponential_(generator=view.generator)  # (B, V)
    ids = (scaled - exp_noise.log()).topk(k, dim=-1).indices  # (B, K) Gumbel-top-k
    return Mixture(ids, candidate_weights(view, ids, weights, temperature, mix_temperature))


def _gaussian(
    view: StepView, k: int, mix_temperature: float = 1.0, noise_scale: float = 0.33,
    weights: str = "policy", temperature: float = 1.0, **_,
) -> Mixture:  # fmt: skip
    mix = _topk(view, k, mix_temperature, weights, temperature)
    rows = view.table[mix.ids].float()  # (B, K, d)
    mixture = (rows * mix.weights.unsqueeze(-1)).sum(-2)  # (B, d)
    rms = mixture.pow(2).mean(-1, keepdim=True).sqrt()  # (B, 1)
    gauss = torch.randn(mixture.shape, generator=view.generator, device=mixture.device)  # (B, d)
    mix.noise = (noise_scale * rms * gauss).to(view.table.dtype)
    return mix


def _orthogonal(view: StepView, k: int, mix_temperature: float = 1.0, **_) -> Mixture:
    mix = _topk(view, k, mix_temperature)
    rows = view.table[mix.ids].float()  # (B, K, d)
    anchor, others = rows[:, 0], rows[:, 1:]  # (B, d), (B, K-1, d)
    unit_anchor = torch.nn.functional.normalize(anchor, dim=-1)  # (B, d)
    diff = others - anchor.unsqueeze(1)  # (B, K-1, d)
    orth = diff - (diff * unit_anchor.unsqueeze(1)).sum(-1, keepdim=True) * unit_anchor.unsqueeze(1)
    unit_orth = torch.nn.functional.normalize(orth, dim=-1)  # (B, K-1, d)
    xi = torch.randn(others.shape[:2], generator=view.generator, device=rows.device)  # (B, K-1)
    scale = mix.weights[:, 1:] * xi * diff.norm(dim=-1)  # (B, K-1)
    mix.noise = (scale.unsqueeze(-1) * unit_orth).sum(1).to(view.table.dtype)  # (B, d)
    mix.weights = torch.zeros_like(mix.weights)
    mix.weights[:, 0] = 1.0
    return mix


MAX_SHIFT_WEIGHT = 0.5  # shift_neighbor: the neighbour never outweighs the anchor


def _anchors(view: StepView, anchor: str) -> torch.LongTensor:
    return view.probs.argmax(-1) if anchor == "greedy" else view.sampled  # (B,)


def _shift_gaussian(view: StepView, k: int, anchor: str = "greedy", noise_scale: float = 0.33, **_):
    anchors = _anchors(view, anchor)  # (B,)
    mix = plain(anchors, k)
    rows = view.table[anchors].float()  # (B, d)
    gauss = torch.randn(rows.shape, generator=view.generator, device=rows.device)  # (B, d)
    direction = torch.nn.functional.normalize(gauss, dim=-1)  # (B, d) uniform on the sphere
    mix.noise = (noise_scale * rows.norm(dim=-1, keepdim=True) * direction).to(view.table.dtype)
    return mix


def shift_weight(anchor_rows: torch.Tensor, neighbor_rows: torch.Tensor, shift: float):
    """Weight w of the neighbour so that ‖w·(e(n) − e(a))‖ = shift·‖e(a)‖, capped at 1/2.

    anchor_rows, neighbor_rows (B, d) -> w (B,) fp32.
    """
    anchor_rows, neighbor_rows = anchor_rows.float(), neighbor_rows.float()
    gap = (neighbor_rows - anchor_rows).norm(dim=-1).clamp_min(1e-12)  # (B,)
    return (shift * anchor_rows.norm(dim=-1) / gap).clamp(max=MAX_SHIFT_WEIGHT)  # (B,)


def _shift_neighbor(view: StepView, k: int, anchor: str = "greedy", noise_scale: float = 0.33, **_):
    anchors = _anchors(view, anchor)  # (B,)
    mix = plain(anchors, k)
    if k == 1:
        return mix
    # Brute force on every call (a probe, not a training path): no index is built for it.
    nearest = bruteforce_neighbors(view.table, anchors, 1, "cosine")[0][:, 0]  # (B,)
    w = shift_weight(view.table[anchors], view.table[nearest], noise_scale)  # (B,)
    mix.ids[:, 1] = nearest
    mix.weights[:, 0], mix.weights[:, 1] = 1.0 - w, w
    return mix


STRATEGIES: dict[str, Callable[..., Mixture]] = {
    "none": _none,
    "neighbor": _neighbor,
    "gaussian": _gaussian,
    "topk": _topk,
    "topk_gumbel": _topk_gumbel,
    "orthogonal": _orthogonal,
    "shift_gaussian": _shift_gaussian,
    "shift_neighbor": _shift_neighbor,
}
# the ones whose records carry noise
NOISE_STRATEGIES = frozenset({"gaussian", "orthogonal", "shift_gaussian"})


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each row of a distribution (B, V); zero-probability entries add 0."""
    return -(probs * probs.clamp_min(1e-30).log()).sum(-1)  # (B,)


def mixing_gate(
    eligible: torch.Tensor,
    probs: torch.Tensor,
    generator: torch.Generator,
    mix_rate: float,
    entropy_threshold: float | None = None,
) -> torch.Tensor:
    """Which rows mix at this step (B,) bool.

    `eligible` already encodes training rollout, strategy, answer marker and EOS. One uniform
    draw per row per step is always consumed (fixed shape), so the gate's random stream depends
    only on the seed and the step, not on which rows are eligible.
    """
    draw = torch.rand(eligible.shape, generator=generator, device=eligible.device)  # (B,)
    fired = draw < mix_rate  # (B,)
    if entropy_threshold is not None:
        fired = fired & (entropy(probs) >= entropy_threshold)
    return eligible & fired
