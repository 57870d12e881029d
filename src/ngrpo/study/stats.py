"""Confidence intervals over seeds and paired differences (pure functions on lists of floats).

The demo and the probe treat seeds as the unit of replication: a number reported "over seeds" is
the mean of one value per seed with a two-sided 95% Student-t interval, `mean ± t(0.975, S−1) ·
sd / √S` (sample sd). A comparison of two methods pairs their values by seed and puts the interval
around the mean per-seed difference.

`paired_difference` can widen that interval by an independent error that the seeds do not see
(`extra_se`): the demo evaluates the base model once rather than once per seed, so the base's own
sampling error is a constant offset across seeds and enters in quadrature,
`half = √(half_seeds² + (1.96 · extra_se)²)`.
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


def t_critical(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` >= 1 degrees of freedom (normal beyond 30)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return T_975[df - 1] if df <= len(T_975) else Z_975


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
