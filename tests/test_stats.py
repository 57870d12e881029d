"""Intervals over seeds, paired differences and the sampling error of mean@n, by hand."""

import math

import pytest

from ngrpo.study.stats import mean_ci, paired_difference, sampling_se, t_critical, verdict


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
