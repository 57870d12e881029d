"""Intervals over seeds, paired differences and the sampling error of mean@n, by hand."""

import math

import pytest

from ngrpo.study.stats import (
    mean_ci,
    minimal_detectable_difference,
    paired_difference,
    paired_sd,
    sampling_se,
    seeds_for_mde,
    t_80,
    t_critical,
    verdict,
)


def test_mean_ci_uses_student_t_over_seeds():
    assert mean_ci([0.5]) == (0.5, 0.5, 0.5)
    # values 0.4, 0.5, 0.6: mean 0.5, sd 0.1, t(0.975, 2) = 4.303
    mean, low, high = mean_ci([0.40, 0.50, 0.60])
    half = 4.303 * 0.1 / math.sqrt(3)
    assert (mean, low, high) == pytest.approx((0.5, 0.5 - half, 0.5 + half))
    assert t_critical(4) == 2.776 and t_critical(100) == 1.96
    with pytest.raises(ValueError):
        mean_ci([])
    with pytest.raises(ValueError):
        t_critical(0)


def test_paired_difference_and_the_extra_error_in_quadrature():
    # per-seed differences 0.10, 0.20, 0.30: mean 0.2, sd 0.1, half = 4.303 * 0.1 / sqrt(3)
    a, b = [0.5, 0.7, 0.6], [0.4, 0.5, 0.3]
    half = 4.303 * 0.1 / math.sqrt(3)
    assert paired_difference(a, b) == pytest.approx((0.2, 0.2 - half, 0.2 + half))
    wide = math.sqrt(half**2 + (1.96 * 0.05) ** 2)
    assert paired_difference(a, b, extra_se=0.05) == pytest.approx((0.2, 0.2 - wide, 0.2 + wide))
    assert paired_difference([0.5], [0.4]) == pytest.approx((0.1, 0.1, 0.1))
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference([0.5, 0.6], [0.4])


def test_verdict_wording():
    assert verdict(0.01, 0.2, 3) == "better, CI excludes 0"
    assert verdict(-0.2, -0.01, 3) == "worse, CI excludes 0"
    assert verdict(-0.1, 0.1, 3) == "within noise"
    assert verdict(0.1, 0.1, 1) == "one seed: cannot tell from noise"


def test_sampling_se_of_mean_at_n():
    # problem accuracies 1/2 and 1 (n = 2): var estimates 0.5*0.5/1 = 0.25 and 0 -> sqrt(0.25)/2
    assert sampling_se([[True, False], [True, True]]) == pytest.approx(0.25)
    # 4 samples, accuracy 1/4: 0.25*0.75/3 = 0.0625 -> se 0.25 for one problem
    assert sampling_se([[True, False, False, False]]) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="n >= 2"):
        sampling_se([[True]])


def test_t_80_quantiles_and_the_minimal_detectable_difference():
    # t(0.80) from a table (df 1, 4, 9, 19) and the normal quantile beyond 30
    assert [t_80(df) for df in (1, 4, 9, 19, 31)] == [1.376, 0.941, 0.883, 0.861, 0.8416]
    # MDE = (t(0.975, S-1) + t(0.80, S-1)) * sd / sqrt(S): by hand for S = 5, 10, 20
    assert minimal_detectable_difference(0.04, 5) == pytest.approx((2.776 + 0.941) * 0.04 / 5**0.5)
    assert minimal_detectable_difference(0.04, 10) == pytest.approx(
        (2.262 + 0.883) * 0.04 / 10**0.5
    )
    assert minimal_detectable_difference(0.04, 20) == pytest.approx(0.02642, abs=1e-5)
    with pytest.raises(ValueError, match=">= 2 seeds"):
        minimal_detectable_difference(0.04, 1)
    # the fewest seeds for a target: 20 seeds reach 0.0265 with sd 0.04, 19 do not
    assert seeds_for_mde(0.04, 0.0265) == 20
    assert minimal_detectable_difference(0.04, 19) > 0.0265
    assert seeds_for_mde(1.0, 0.001, most=50) is None


def test_paired_sd_adds_the_constant_error_as_paired_difference_does():
    a, b = [0.5, 0.6, 0.7], [0.4, 0.4, 0.4]
    assert paired_sd(a, b) == pytest.approx(0.1)  # differences 0.1, 0.2, 0.3
    # with extra_se: sd / sqrt(S) is the standard error with the constant error in quadrature
    sd = paired_sd(a, b, extra_se=0.05)
    assert (sd / 3**0.5) ** 2 == pytest.approx(0.1**2 / 3 + 0.05**2)
    with pytest.raises(ValueError, match=">= 2 seeds"):
        paired_sd([0.5], [0.4])
