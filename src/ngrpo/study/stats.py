"""Confidence intervals over seeds and paired differences (pure functions on lists of floats).

The demo and the probe treat seeds as the unit of replication: a number reported "over seeds" is
the mean of one value per seed with a two-sided 95% Student-t interval, `mean ± t(0.975, S−1) ·
sd / √S` (sample sd). A comparison of two methods pairs their values by seed and puts the interval
around the mean per-seed difference.

`paired_difference` can widen that interval by an independent error that the seeds do not see
(`extra_se`): the demo evaluates the base model once rather than once per seed, so the base's own
sampling error is a constant offset across seeds and enters in quadrature,
`half = √(half_seeds² + (1.96 · extra_se)²)`.

**Power.** `minimal_detectable_difference` is the smallest true paired difference a comparison of
S seeds detects with 80% power at two-sided α = 0.05: `MDE = (t(0.975, S−1) + t(0.80, S−1)) · sd
/ √S`, `sd` the seed-to-seed standard deviation of the paired differences (plus `extra_se` in
quadrature, as above). `seeds_for_mde` inverts it: the fewest seeds whose MDE reaches a target for
a given sd.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

# Two-sided 95% Student t critical values by degrees of freedom (1..30; normal beyond).
T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
    2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
    2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
Z_975 = 1.96
# One-sided 80% Student t quantiles by degrees of freedom (1..30; normal beyond).
T_80 = (
    1.376, 1.061, 0.978, 0.941, 0.920, 0.906, 0.896, 0.889, 0.883, 0.879, 0.876, 0.873, 0.870,
    0.868, 0.866, 0.865, 0.863, 0.862, 0.861, 0.860, 0.859, 0.858, 0.858, 0.857, 0.856, 0.856,
    0.855, 0.855, 0.854, 0.854,
)  # fmt: skip
Z_80 = 0.8416


def _t_quantile(table: tuple[float, ...], normal: float, df: int) -> float:
    """A Student-t quantile from `table` (df = 1..len), the normal's `normal` beyond it."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return table[df - 1] if df <= len(table) else normal


def t_critical(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` >= 1 degrees of freedom (normal beyond 30)."""
    return _t_quantile(T_975, Z_975, df)


def t_80(df: int) -> float:
    """The 80% quantile of Student's t with `df` >= 1 degrees of freedom (normal beyond 30)."""
    return _t_quantile(T_80, Z_80, df)


def minimal_detectable_difference(sd: float, seeds: int) -> float:
    """Smallest true mean difference detected with 80% power (two-sided 5%) from `seeds` paired
    differences whose standard deviation is `sd` (module docstring); needs `seeds` >= 2."""
    if seeds < 2:
        raise ValueError(f"a detectable difference needs >= 2 seeds, got {seeds}")
    return (t_critical(seeds - 1) + t_80(seeds - 1)) * sd / math.sqrt(seeds)


def seeds_for_mde(sd: float, target: float, most: int = 1000) -> int | None:
    """The fewest seeds (>= 2) whose minimal detectable difference is <= `target`; None beyond
    `most`."""
    for seeds in range(2, most + 1):
        if minimal_detectable_difference(sd, seeds) <= target:
            return seeds
    return None


def paired_sd(a: Sequence[float], b: Sequence[float], extra_se: float = 0.0) -> float:
    """Standard deviation of the per-seed differences `a[s] − b[s]`, with `extra_se · √S` added in
    quadrature so that `sd / √S` is the difference's standard error (as `paired_difference`)."""
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    if len(diffs) < 2:
        raise ValueError("a seed-to-seed spread needs >= 2 seeds")
    return math.hypot(statistics.stdev(diffs), extra_se * math.sqrt(len(diffs)))


def mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and 95% Student-t interval over seeds (zero width for a single value)."""
    if not values:
        raise ValueError("mean of no values")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, mean, mean
    half = t_critical(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def paired_difference(
    a: Sequence[float], b: Sequence[float], extra_se: float = 0.0
) -> tuple[float, float, float]:
    """Mean per-seed difference `a[s] − b[s]` with its 95% interval, widened by `extra_se`.

    With one seed the interval has zero width (there is no spread to judge it by): callers must
    not read a verdict from it (`verdict` says so).
    """
    if len(a) != len(b):
        raise ValueError(f"paired values need the same seeds, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    mean, low, _ = mean_ci(diffs)
    if len(diffs) < 2:
        return mean, mean, mean
    half = math.hypot(mean - low, Z_975 * extra_se)
    return mean, mean - half, mean + half


def verdict(low: float, high: float, seeds: int) -> str:
    """Plain-language reading of a difference's 95% interval."""
    if seeds < 2:
        return "one seed: cannot tell from noise"
    if low > 0:
        return "better, CI excludes 0"
    if high < 0:
        return "worse, CI excludes 0"
    return "within noise"


def sampling_se(per_problem: Sequence[Sequence[bool]]) -> float:
    """Standard error of mean@n over a fixed problem set, from the sampling of the n answers only.

    `per_problem[i]` are the n graded samples of problem i. The problems are the same for every
    model, so only the within-problem binomial noise is random:
    `Var(mean@n) = Σ_i p_i(1 − p_i)/n / P²`, with the unbiased `a_i(1 − a_i)·n/(n − 1)` for
    `p_i(1 − p_i)` (a_i = problem i's observed accuracy). Needs n >= 2 samples per problem.
    """
    if not per_problem:
        raise ValueError("no problems")
    variance = 0.0
    for samples in per_problem:
        n = len(samples)
        if n < 2:
            raise ValueError("the sampling error of mean@n needs n >= 2 samples per problem")
        acc = sum(samples) / n
        variance += acc * (1 - acc) / (n - 1)  # = a(1-a)·n/(n-1) / n
    return math.sqrt(variance) / len(per_problem)
