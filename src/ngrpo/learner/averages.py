"""How the learner's metrics combine over micro-batches, mini-batches and epochs: means, the
ratio's extremes, and means weighted by token counts (`WEIGHTED_KEYS`, which the trainer also
uses to combine processes: `ngrpo.trainer.step`)."""

from __future__ import annotations

from ngrpo.method.rollout_correction import CORRECTION_WEIGHTS, MEAN_WEIGHTS

MIN_KEYS = ("actor/ratio_min",)  # metrics reduced by their minimum over micro-batches
MAX_KEYS = ("actor/ratio_max",)  # ... and by their maximum
RATIO_TOKENS = "actor/ratio_tokens"  # the loss tokens behind `actor/ratio_*` (summed)
# Means over the loss tokens of a micro-batch (`ngrpo.method.losses.policy_loss`), and what each
# reports when no token was scored anywhere
TOKEN_MEANS = {
    "actor/ratio_mean": 1.0,
    "actor/clip_frac": 0.0,
    "actor/clip_frac_low": 0.0,
    "actor/clip_frac_high": 0.0,
    "loss/pg_clipfrac_lower": 0.0,
}
WEIGHTED_KEYS = {**dict.fromkeys(TOKEN_MEANS, RATIO_TOKENS), **MEAN_WEIGHTS, **CORRECTION_WEIGHTS}
"""Means weighted by a count (mean key -> count key) when micro-batches or processes combine; the
counts are summed. `MIN_KEYS` / `MAX_KEYS` skip what has no `RATIO_TOKENS` (nothing was scored:
e.g. a micro-batch of truncated rows under `mask_truncated_completions`)."""


class Averages:
    """Running means of metric dicts; `MIN_KEYS` keep their minimum and `MAX_KEYS` their maximum
    instead (the extremes of the ratio, not a mean of per-micro-batch extremes), over the parts
    that scored a loss token; `TOKEN_MEANS` are weighted by `RATIO_TOKENS`, which is summed.
    A result that scored no token at all reports ratios of 1, clip fractions of 0 (and
    `RATIO_TOKENS` 0)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.counts: dict[str, float] = {}

    def add(self, metrics: dict[str, float]) -> None:
        tokens = metrics.get(RATIO_TOKENS)
        for key, value in metrics.items():
            value = float(value)
            if key in MIN_KEYS or key in MAX_KEYS:
                if tokens == 0:
                    continue  # no loss token: no ratio (the loss function reports 1)
                pick = min if key in MIN_KEYS else max
                self.totals[key] = pick(self.totals.get(key, value), value)
                self.counts[key] = 1.0
            elif key == RATIO_TOKENS:
                self.totals[key] = self.totals.get(key, 0.0) + value
                self.counts[key] = 1.0
            else:
                weight = tokens if key in TOKEN_MEANS and tokens is not None else 1.0
                self.totals[key] = self.totals.get(key, 0.0) + value * weight
                self.counts[key] = self.counts.get(key, 0.0) + weight

    def result(self) -> dict[str, float]:
        result = {
            key: self.totals[key] / self.counts[key] if self.counts[key] else TOKEN_MEANS[key]
            for key in self.totals
        }
        if RATIO_TOKENS in result:  # every part empty: the extremes of no ratio are 1
            for key in (*MIN_KEYS, *MAX_KEYS):
                result.setdefault(key, 1.0)
        return result
