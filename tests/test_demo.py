"""The demo's statistics and report pieces (the full run is CI's `ngrpo demo --quick` smoke run)."""

from __future__ import annotations

import statistics

import pytest

from ngrpo.demo import METHODS, compare, main_table, mean_ci, summarize


def test_mean_ci_uses_student_t_over_seeds():
    mean, low, high = mean_ci([0.5])
    assert mean == low == high == 0.5
    values = [0.40, 0.50, 0.60]
    mean, low, high = mean_ci(values)
    half = 4.303 * statistics.stdev(values) / 3**0.5  # t(0.975, df=2)
    assert mean == pytest.approx(0.5)
    assert (low, high) == pytest.approx((0.5 - half, 0.5 + half))


def _entry(id_mean: float, ood_mean: float) -> dict:
    def summary(m: float) -> dict:
        return {"mean@n": m, "pass@k": {"1": m, "2": min(1.0, 1.5 * m)}}

    return {
        "final": {"arith-id": summary(id_mean), "arith-ood": summary(ood_mean)},
        "curve": [(0, id_mean - 0.1), (10, id_mean)],
        "diversity": {"diversity/distinct_answers": 2.0},
    }


def test_paired_differences_say_when_a_gap_is_within_noise():
    per_seed = {
        "base": [_entry(0.30, 0.10), _entry(0.32, 0.11), _entry(0.31, 0.09)],
        "grpo": [_entry(0.50, 0.12), _entry(0.52, 0.10), _entry(0.49, 0.08)],
        "n-grpo": [_entry(0.51, 0.20), _entry(0.50, 0.05), _entry(0.53, 0.12)],
        "stht": [_entry(0.45, 0.10), _entry(0.46, 0.10), _entry(0.44, 0.10)],
    }
    rows = {(r["a"], r["b"], r["split"]): r for r in compare(per_seed)}
    gain = rows[("grpo", "base", "arith-id")]
    assert gain["difference"] == pytest.approx((0.20 + 0.20 + 0.18) / 3)
    assert not gain["within_noise"] and gain["ci"][0] > 0
    assert rows[("n-grpo", "grpo", "arith-ood")]["within_noise"]  # noisy: the CI spans 0
    single = compare({k: v[:1] for k, v in per_seed.items()})
    assert all(r["within_noise"] for r in single)  # one seed: nothing can be told from noise


def test_summary_and_main_table():
    per_seed = {name: [_entry(0.4, 0.1), _entry(0.6, 0.3)] for name in ["base", *METHODS]}
    summary = summarize(per_seed)
    assert summary["grpo"]["arith-id"]["mean@n"][0] == pytest.approx(0.5)
    assert summary["grpo"]["curve"][1][:2] == (10, pytest.approx(0.5))
    table = main_table({"summary": summary, "seeds": [0, 1], "settings": {"final_n": 2}})
    assert table[0] == ["method", "ID mean@n", "ID pass@2", "OOD mean@n", "OOD pass@2"]
    assert [row[0] for row in table[1:]] == ["base", "grpo", "n-grpo", "stht"]
    assert table[1][1].startswith("50.0 [")  # mean with its interval when seeds > 1
