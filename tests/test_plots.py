"""Each plot writes one valid, non-trivial PNG, with and without confidence intervals."""

import pytest

from ngrpo.study.plots import (
    plot_accuracy_over_steps,
    plot_diversity,
    plot_pass_at_k,
    plot_probe,
    split_value,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 5_000  # a drawn figure, not an empty canvas
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 300 and height > 300


def test_split_value():
    assert split_value(0.5) == (0.5, None, None)
    assert split_value(1) == (1.0, None, None)
    assert split_value((0.5, 0.4, 0.6)) == (0.5, 0.4, 0.6)
    assert split_value([0.5]) == (0.5, None, None)
    with pytest.raises(ValueError, match="ci_low"):
        split_value((0.5, 0.4))


def test_accuracy_over_steps_with_and_without_intervals(tmp_path):
    curves = {
        "base": [(0, 0.40)],  # a single point
        "none": [(0, 0.40, 0.35, 0.45), (20, 0.50, 0.44, 0.56), (10, 0.47, 0.40, 0.52)],
        "neighbor": [(0, 0.40), (10, 0.49), (20, 0.55)],
        "single-with-ci": [(5, 0.42, 0.40, 0.44)],
    }
    out = plot_accuracy_over_steps(curves, tmp_path / "sub" / "acc.png", "ID accuracy", "mean@8")
    assert out == tmp_path / "sub" / "acc.png"
    assert_png(out)
    with pytest.raises(ValueError):
        plot_accuracy_over_steps({}, tmp_path / "empty.png")


def test_pass_at_k_with_string_keys_intervals_and_one_k(tmp_path):
    results = {
        "base": {1: 0.4, 2: 0.55, 4: 0.7, 8: 0.8, 16: 0.86},
        "neighbor": {"1": (0.5, 0.45, 0.55), "16": (0.9, 0.85, 0.95), "4": (0.75, 0.7, 0.8)},
        "gaussian": {1: 0.45},
    }
    assert_png(plot_pass_at_k(results, tmp_path / "pass.png", "pass@k (arith-ood)"))


def test_diversity_bars(tmp_path):
    per_method = {
        "none": {"diversity/distinct_answers": 1.8, "diversity/pairwise_edit": (0.2, 0.15, 0.25)},
        "neighbor": {"diversity/distinct_answers": (2.3, 2.0, 2.6), "diversity/pairwise_edit": 0.3},
        "gaussian": {"diversity/distinct_answers": 2.9},  # a missing metric is left out
    }
    assert_png(plot_diversity(per_method, tmp_path / "div.png"))
    assert_png(plot_diversity({"none": {"diversity/zero_adv_frac": 0.5}}, tmp_path / "one.png"))


def _row(kind, target, achieved, acc, ci=False):
    row = {
        "perturbation": kind, "target_shift": target, "achieved_shift": achieved,
        "accuracy": acc, "answer_agreement": 1 - achieved, "distinct_answers": 1 + achieved,
        "pairwise_edit": achieved / 2,
    }  # fmt: skip
    if ci:
        row["accuracy_ci"] = [acc - 0.05, acc + 0.05]
    return row


def test_probe_plot(tmp_path):
    rows = [_row("none", 0.0, 0.0, 0.5, ci=True)]
    rows += [_row("gaussian", s, s, 0.5 - s, ci=True) for s in (0.1, 0.3)]
    rows += [_row("neighbor", s, 0.9 * s, 0.5 - s / 3) for s in (0.1, 0.3)]
    rows += [_row("n-grpo", None, 0.02, 0.49)]  # the uncontrolled reference: one point
    assert_png(plot_probe({"rows": rows}, tmp_path / "probe.png"))
    assert_png(plot_probe({"rows": rows[:1]}, tmp_path / "baseline_only.png"))
    with pytest.raises(ValueError):
        plot_probe({"rows": []}, tmp_path / "none.png")
