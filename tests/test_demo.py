"""The demo's settings, method tables, statistics and report on hand-made per-seed results (the
full run is CI's `ngrpo demo --quick` smoke run)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from ngrpo.cli import main
from ngrpo.cli._common import parse_seeds
from ngrpo.config import load_config
from ngrpo.study.recommendation import recommendation_lines
from ngrpo.study.report import (
    compare,
    comparison_pairs,
    effect_table,
    main_table,
    render_report,
    reproduce_command,
    summarize,
    verdict_lines,
)
from ngrpo.study.settings import (
    DIAGNOSIS_METHODS,
    FULL_METHODS,
    FULL_SEEDS,
    METHODS,
    DemoSettings,
)
from ngrpo.study.stats import verdict
from ngrpo.utils.errors import NgrpoError


@pytest.mark.parametrize(
    ("text", "seeds"),
    [("3", (0, 1, 2)), ("1", (0,)), ("7,8,9", (7, 8, 9)), (" 7, 8 ", (7, 8)), ("7,", (7,)),
     ("0,5", (0, 5))],
)  # fmt: skip
def test_parse_seeds_count_or_list(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("0", "number of seeds must be >= 1"), ("-2", "number of seeds must be >= 1"),
     ("a,b", "comma-separated list of integers"), ("1.5", "comma-separated list of integers"),
     ("", "comma-separated list of integers"), ("7,,8", "comma-separated list of integers"),
     ("7,8,7", "seed 7 is listed twice"), ("3,-1", "non-negative")],
)  # fmt: skip
def test_parse_seeds_rejects_bad_input(text, fragment):
    with pytest.raises(NgrpoError, match=fragment):
        parse_seeds(text)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [(["--seeds", "0"], "--seeds: the number of seeds must be >= 1"),
     (["--seeds", "a,b"], "--seeds takes a count"),
     (["--seeds", "1,2,1"], "seed 1 is listed twice"),
     (["--full", "--seeds", "3"], "--full compares >= 5 seeds, got 3")],
)  # fmt: skip
def test_cli_demo_bad_seeds_are_one_error_line(argv, fragment, tmp_path, capsys):
    code = main(["demo", *argv, "--out", str(tmp_path / "demo")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and fragment in err[0]
    assert not (tmp_path / "demo").exists()  # rejected before anything ran


def test_method_tables_of_the_default_and_full_runs():
    default = DemoSettings.default(Path("o"))
    assert default.seeds == (0, 1, 2) and default.methods is METHODS
    assert {k: (m.label, m.config, m.overrides) for k, m in METHODS.items()} == {
        "grpo": ("GRPO", "tiny_grpo", ()),
        "n-grpo": ("N-GRPO (release)", "tiny_ngrpo", ("exploration.neighbor_weights=release",)),
        "stht": ("STHT-style", "tiny_stht", ()),
    }
    full = DemoSettings.default(Path("o"), full=True)
    assert full.seeds == tuple(range(FULL_SEEDS)) and full.methods is FULL_METHODS
    assert list(FULL_METHODS) == [
        "grpo", "n-grpo", "stht", "n-grpo-paper", "n-grpo-sampled", "n-grpo-full",
    ]  # fmt: skip
    assert FULL_METHODS["n-grpo-full"].overrides == (
        "exploration.neighbor_weights=release", "exploration.neighbor_table=output",
        "train.soft_input_grad=none", "train.clip_ratio_c=3.0",
    )  # fmt: skip
    paper = FULL_METHODS["n-grpo-paper"]
    assert (paper.label, paper.config) == ("N-GRPO (paper text)", "tiny_ngrpo")
    assert paper.overrides == ("exploration.neighbor_weights=policy",)
    sampled = FULL_METHODS["n-grpo-sampled"]
    assert sampled.overrides == (
        "exploration.neighbor_weights=release", "exploration.anchor=sampled",
    )  # fmt: skip
    # --full: pass@k to k = 256 and the 100-step setting (GRPO, N-GRPO (release), the full
    # release and the diagnosis switches, no large-k evaluation after it) on the first 10 seeds
    assert (full.passk_n, full.passk_seed_list) == (256, tuple(range(10)))
    assert full.long_steps == 100 and full.long_seed_list == tuple(range(10))
    assert full.long_methods == (
        "grpo", "n-grpo", "n-grpo-anneal", "n-grpo-full", "n-grpo-gate", "n-grpo-nograd",
        "n-grpo-output",
    ) and not full.long_passk  # fmt: skip
    assert set(full.all_methods) == set(FULL_METHODS) | set(DIAGNOSIS_METHODS)
    assert default.all_methods is METHODS and full.stages == ("long", "diagnosis", "main")
    with pytest.raises(NgrpoError, match="--stages: unknown"):
        dataclasses.replace(full, stages=("long", "later")).validate()
    assert default.passk_seed_list == () and default.long_seed_list == ()
    assert default.probe_seed_list == (0, 1, 2) and full.probe_seed_list == (0, 1, 2, 3, 4)
    assert DemoSettings.default(Path("o"), (7, 8, 9), full=False).seeds == (7, 8, 9)
    quick = DemoSettings.quick(Path("o"), full=True)
    assert quick.seeds == (0,) and quick.preset == "quick" and quick.steps < default.steps
    quick.validate()  # --quick --full: a smoke run may use fewer than 5 seeds
    with pytest.raises(NgrpoError, match="--full compares >= 5 seeds"):
        DemoSettings.default(Path("o"), (0, 1, 2, 3), full=True).validate()
    for bad in (dict(final_n=3), dict(final_n=1), dict(passk_n=100)):
        with pytest.raises(NgrpoError, match="must be a power of two"):
            dataclasses.replace(default, **bad).validate()
    with pytest.raises(NgrpoError, match="long_steps must differ"):
        dataclasses.replace(full, long_steps=full.steps).validate()


# the settings outside `exploration` a method may change (the released reading's learner)
LEARNER_SWITCHES = {
    "n-grpo-full": {"soft_input_grad": "none", "clip_ratio_c": 3.0},
    "n-grpo-nograd": {"soft_input_grad": "none"},
}


@pytest.mark.parametrize("key", [*FULL_METHODS, *DIAGNOSIS_METHODS])
def test_every_method_config_loads_and_differs_only_in_exploration(key):
    method = {**FULL_METHODS, **DIAGNOSIS_METHODS}[key]
    cfg = load_config(method.config, list(method.overrides))
    for name, value in LEARNER_SWITCHES.get(key, {}).items():
        assert getattr(cfg.train, name) == value
        setattr(cfg.train, name, getattr(load_config("tiny_grpo").train, name))
    reference = load_config("tiny_grpo")
    strategy = {"grpo": "none", "stht": "gaussian"}.get(key, "neighbor")
    assert cfg.exploration.strategy == strategy
    if key.startswith("n-grpo"):
        expected = "policy" if key == "n-grpo-paper" else "release"
        assert cfg.exploration.neighbor_weights == expected
        assert cfg.exploration.anchor == ("sampled" if key == "n-grpo-sampled" else "greedy")
    for section in ("train", "rollout", "data", "eval"):
        assert getattr(cfg, section) == getattr(reference, section), section


def _evaluation(id_mean: float, ood_mean: float, se: float = 0.0) -> dict:
    def split(m: float) -> dict:
        return {"mean@n": m, "mean@n_se": se, "pass@k": {"1": m, "2": min(1.0, 1.5 * m)}}

    return {"final": {"arith-id": split(id_mean), "arith-ood": split(ood_mean)}}


def _entry(id_mean: float, ood_mean: float) -> dict:
    return {
        **_evaluation(id_mean, ood_mean),
        "curve": [(0, 0.30), (10, id_mean)],
        "diversity": {"diversity/distinct_answers": 2.0},
    }


BASE = {**_evaluation(0.30, 0.10, se=0.01), "curve_start": 0.30, "eval_seed": 0}
PER_SEED = {
    "grpo": [_entry(0.50, 0.12), _entry(0.52, 0.10), _entry(0.48, 0.08)],
    "n-grpo": [_entry(0.51, 0.20), _entry(0.50, 0.05), _entry(0.53, 0.12)],
    "stht": [_entry(0.45, 0.10), _entry(0.46, 0.10), _entry(0.44, 0.10)],
}


def test_paired_effect_sizes_and_verdicts_by_hand():
    rows = {(r["a"], r["b"], r["split"], r["metric"]): r for r in compare(BASE, PER_SEED, n=2)}
    # GRPO - base (ID): differences 0.20, 0.22, 0.18 -> sd 0.02, t = 4.303; the base's sampling
    # error 0.01 enters in quadrature.
    gain = rows[("grpo", "base", "arith-id", "mean@n")]
    half = math.sqrt((4.303 * 0.02 / math.sqrt(3)) ** 2 + (1.96 * 0.01) ** 2)  # 0.05341
    assert gain["difference"] == pytest.approx(0.20)
    assert gain["ci"] == pytest.approx([0.20 - half, 0.20 + half])
    assert gain["verdict"] == "better, CI excludes 0" and not gain["within_noise"]
    # N-GRPO - GRPO (ID): 0.01, -0.02, 0.05 -> mean 0.013333, sd 0.035119, half 0.087248
    vs_grpo = rows[("n-grpo", "grpo", "arith-id", "mean@n")]
    assert vs_grpo["difference"] == pytest.approx(0.013333, abs=1e-6)
    assert vs_grpo["ci"] == pytest.approx([0.013333 - 0.087248, 0.013333 + 0.087248], abs=1e-5)
    assert vs_grpo["verdict"] == "within noise" and vs_grpo["within_noise"]
    # N-GRPO - STHT (ID): 0.06, 0.04, 0.09 -> mean 0.063333, sd 0.025166, half 0.062522
    vs_stht = rows[("n-grpo", "stht", "arith-id", "mean@n")]
    assert vs_stht["ci"] == pytest.approx([0.000811, 0.125855], abs=1e-5)
    assert vs_stht["verdict"] == "better, CI excludes 0"
    # pass@n (here pass@2 = 1.5 x mean) between methods, never against the single base evaluation
    assert rows[("n-grpo", "stht", "arith-id", "pass@2")]["difference"] == pytest.approx(0.095)
    assert ("grpo", "base", "arith-id", "pass@2") not in rows
    assert {(a, b) for a, b, _, _ in rows} == {
        ("grpo", "base"), ("n-grpo", "base"), ("stht", "base"), ("n-grpo", "grpo"),
        ("stht", "grpo"), ("n-grpo", "stht"),
    }  # fmt: skip
    single = compare(BASE, {k: v[:1] for k, v in PER_SEED.items()}, n=2)
    assert all(r["verdict"] == "one seed: cannot tell from noise" for r in single)


def test_full_run_pairs_add_the_paper_text_weighting_and_the_sampled_anchor():
    methods = ["grpo", "n-grpo", "stht", "n-grpo-paper"]
    assert comparison_pairs(methods) == [
        ("grpo", "base"), ("n-grpo", "base"), ("stht", "base"), ("n-grpo-paper", "base"),
        ("n-grpo", "grpo"), ("stht", "grpo"), ("n-grpo-paper", "grpo"),
        ("n-grpo", "stht"), ("n-grpo-paper", "stht"), ("n-grpo-paper", "n-grpo"),
    ]  # fmt: skip
    assert comparison_pairs(list(FULL_METHODS))[-1] == ("n-grpo-sampled", "n-grpo")


def _results(seeds=(7, 8, 9), out="ngrpo-demo") -> dict:
    per_seed = {k: v[: len(seeds)] for k, v in PER_SEED.items()}
    probe_row = {
        "perturbation": "none", "target_shift": 0.0, "matched_to": None, "achieved_shift": 0.0,
        "accuracy": 0.5, "answer_agreement": 1.0, "distinct_answers": 1.5, "seeds": 1,
    }  # fmt: skip
    return {
        "settings": {"out": out, "seeds": list(seeds), "steps": 60, "final_limit": 200,
                     "final_n": 2, "full": False, "preset": "default"},
        "seeds": list(seeds),
        "methods": {k: {"label": m.label, "config": m.config, "overrides": list(m.overrides)}
                    for k, m in METHODS.items()},
        "base": BASE,
        "summary": summarize(BASE, per_seed),
        "comparisons": compare(BASE, per_seed, n=2),
        "environment": {"platform": "linux", "cpus": 2, "cuda": False, "python": "3.11",
                        "torch": "2", "transformers": "5", "accelerate": "1"},
        "timings": {"training": 300.0, "evaluation": 100.0},
        "wall_seconds": 412.0,
        "plots": {"accuracy": "accuracy_over_steps.png"},
        "probe": {"config": {"seed": 7, "seeds": [7]}, "rows": [probe_row]},
    }  # fmt: skip


def test_summary_and_main_table():
    results = _results()
    summary = results["summary"]
    assert summary["grpo"]["arith-id"]["mean@n"][0] == pytest.approx(0.50)
    assert summary["grpo"]["curve"][1][:2] == (10, pytest.approx(0.50))
    assert summary["base"]["arith-id"]["mean@n"] == pytest.approx((0.30, 0.2804, 0.3196))
    table = main_table(results)
    assert table[0] == ["method", "ID mean@2", "ID pass@2", "OOD mean@2", "OOD pass@2"]
    assert [row[0] for row in table[1:]] == ["base", "GRPO", "N-GRPO (release)", "STHT-style"]
    assert table[1][1] == "30.0 [28.0, 32.0]" and table[1][2] == "45.0"  # base: one evaluation
    assert table[2][1].startswith("50.0 [")  # a mean with its interval over seeds


def test_report_states_effect_sizes_verdicts_and_how_to_reproduce():
    results = _results()
    effects = effect_table(results)
    assert effects[0] == ["comparison", "ID mean@2", "OOD mean@2", "ID pass@2", "OOD pass@2"]
    row = next(r for r in effects if r[0] == "N-GRPO (release) − STHT-style")
    assert row[1] == "+6.3 [+0.1, +12.6]"
    base_row = next(r for r in effects if r[0] == "GRPO − base")
    assert base_row[3] == "–"  # no pass@n against the base
    lines = verdict_lines(results)
    assert len(lines) == 6
    assert lines[3].startswith("- **N-GRPO (release) vs GRPO**: ID mean@2 +1.3 points (95% CI")
    assert "within noise" in lines[3]
    report = render_report(results)
    assert "**N-GRPO (release) vs STHT-style**: ID mean@2 +6.3 points" in report
    assert "better, CI excludes 0" in report
    assert "Seeds [7, 8, 9]" in report
    assert "Wall time of the last invocation 412 s; compute per stage (seconds of" in report
    assert "inflates them: training 300 s" in report
    assert "Reproduce: `ngrpo demo --seeds 7,8,9`" in report
    assert "| N-GRPO (release) − GRPO | +1.3 [" in report
    one = render_report(_results(seeds=(0,)))
    assert "one seed: cannot tell from noise" in one


def test_reproduce_command():
    settings = {"seeds": [0, 1, 2], "out": "ngrpo-demo", "full": False, "preset": "default"}
    assert reproduce_command(settings) == "ngrpo demo --seeds 3"
    settings.update(seeds=[7, 8, 9, 10, 11], out="docs/results", full=True)
    assert reproduce_command(settings) == "ngrpo demo --full --seeds 7,8,9,10,11 --out docs/results"
    settings.update(seeds=[4], preset="quick", full=False, out="ngrpo-demo")
    assert reproduce_command(settings) == "ngrpo demo --quick --seeds 4,"
    assert parse_seeds("4,") == (4,)


def _vs_grpo(method: str, split: str, d: float, low: float, high: float) -> dict:
    return {"a": method, "b": "grpo", "split": split, "metric": "mean@n", "difference": d,
            "ci": [low, high], "seeds": 20, "verdict": verdict(low, high, 20)}  # fmt: skip


def test_recommendation_follows_its_rules():
    comparisons = [
        _vs_grpo("n-grpo", "arith-id", -0.014, -0.035, 0.007),
        _vs_grpo("n-grpo", "arith-ood", 0.001, -0.017, 0.018),
        _vs_grpo("n-grpo-sampled", "arith-id", 0.001, -0.023, 0.026),
        _vs_grpo("n-grpo-sampled", "arith-ood", 0.03, 0.001, 0.059),
        _vs_grpo("n-grpo-paper", "arith-id", -0.042, -0.063, -0.021),
        _vs_grpo("n-grpo-paper", "arith-ood", -0.002, -0.02, 0.016),
        _vs_grpo("stht", "arith-id", -0.1, -0.2, -0.05),  # not an N-GRPO method: not advised on
    ]
    labels = {"n-grpo": "REL", "n-grpo-sampled": "SAMPLED", "n-grpo-paper": "PAPER", "x": "X"}
    gap = {"difference": -0.06, "ci": [-0.09, -0.03], "seeds": 10, "verdict": "worse", "mde": 0.05}
    results = {
        "settings": {"final_n": 16, "steps": 20, "long_steps": 100},
        "comparisons": comparisons,
        "long_summary": {"diagnosis": {"gap": gap, "switches": {}}},
    }
    text = "\n".join(recommendation_lines(results, labels))
    # ordered by the ID difference; the paper text is worse on ID, so it is to avoid
    assert "best ID difference first: SAMPLED (ID mean@16 − GRPO +0.1 [-2.3, +2.6]), REL (" in text
    assert "Avoid PAPER (worse on ID -4.2 [-6.3, -2.1])" in text
    assert "Better than GRPO beyond noise: SAMPLED on OOD." in text and "stht" not in text
    assert "no switch tested so far closes the gap: prefer GRPO" in text and "MDE 5.0" in text
    # a switch that closes the gap is what to use for long training
    results["long_summary"]["diagnosis"]["switches"] = {"x": {"verdict": "closes the gap"}}
    assert "When training this long, use X." in "\n".join(recommendation_lines(results, labels))
    # nothing finished: the short budget is pending, the expectation is still marked as such
    text = "\n".join(recommendation_lines({"settings": {"final_n": 16, "steps": 20}}, labels))
    assert "has not finished" in text and "*Expectation, not measured here:*" in text
