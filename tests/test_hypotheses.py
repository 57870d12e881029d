"""The demo's hypotheses H1-H3, power and crossover on hand-made per-seed results, by hand; the
demo's re-use of finished units."""

from __future__ import annotations

import math

import pytest

from ngrpo.study import hypotheses
from ngrpo.study.report import analyse, render_report
from ngrpo.study.stats import minimal_detectable_difference
from ngrpo.study.units import cached as _cached

KEYS = ("diversity/canonical_paths", "diversity/rephrase_pairs", "reward/accuracy")


def _seed(paths: float, rephrase: float, accuracy: float, id_mean: float = 0.5, **extra) -> dict:
    split = {"mean@n": id_mean, "mean@n_se": 0.01, "pass@k": {"1": id_mean, "2": id_mean}}
    return {
        "final": {"arith-id": split, "arith-ood": {**split, "mean@n": id_mean / 2},
                  "arith-long": {**split, "mean@n": 0.0}},
        "diversity": dict(zip(KEYS, (paths, rephrase, accuracy), strict=True)),
        "curve": [(0, 0.3), (10, id_mean)], "seconds": {"training": 60.0, "evaluation": 20.0},
        **extra,
    }  # fmt: skip


def _per_seed(ngrpo_paths=(3.5, 3.6, 3.4)) -> dict:
    return {
        "grpo": [_seed(3.0, 0.30, 0.50, 0.50), _seed(3.0, 0.30, 0.52, 0.52),
                 _seed(3.0, 0.30, 0.48, 0.48)],
        "n-grpo": [_seed(p, r, a, m) for p, r, a, m in zip(
            ngrpo_paths, (0.20, 0.18, 0.22), (0.51, 0.51, 0.48), (0.51, 0.50, 0.53), strict=True)],
        "stht": [_seed(3.2, 0.25, 0.40, 0.45), _seed(3.2, 0.25, 0.40, 0.46),
                 _seed(3.2, 0.25, 0.41, 0.44)],
    }  # fmt: skip


def test_h1_holds_only_when_every_part_does():
    found = hypotheses.semantic(_per_seed())
    assert found["keys"] == list(KEYS)  # the keys every run logged, in H1_KEYS order
    rows = {(r["a"], r["b"], r["key"]): r for r in found["comparisons"]}
    paths = rows[("n-grpo", "grpo", "diversity/canonical_paths")]
    # differences 0.5, 0.6, 0.4: mean 0.5, sd 0.1, half 4.303 * 0.1 / sqrt(3)
    half = 4.303 * 0.1 / math.sqrt(3)
    assert paths["difference"] == pytest.approx(0.5)
    assert paths["ci"] == pytest.approx([0.5 - half, 0.5 + half])
    verdict = found["verdicts"]["n-grpo"]
    assert verdict["parts"] == {
        "more canonical paths than GRPO": True, "fewer rephrase-only pairs than GRPO": True,
        "rollouts as valid as GRPO's": True,  # differences 0.01, -0.01, 0.0: within noise
        "rollouts more valid than STHT-style's": True,
    }  # fmt: skip
    assert verdict["holds"] is True
    # canonical paths within noise (differences +0.5, -0.4, +0.1): the hypothesis fails
    fails = hypotheses.semantic(_per_seed(ngrpo_paths=(3.5, 2.6, 3.1)))["verdicts"]["n-grpo"]
    assert fails["parts"]["more canonical paths than GRPO"] is False and fails["holds"] is False
    one = hypotheses.semantic({k: v[:1] for k, v in _per_seed().items()})["verdicts"]["n-grpo"]
    assert one["holds"] is None  # one seed: undecided
    # the sampled anchor (the control for mixing around the argmax) is also compared with the
    # greedy one
    runs = {**_per_seed(), "n-grpo-sampled": _per_seed(ngrpo_paths=(4.0, 4.1, 3.9))["n-grpo"]}
    control = hypotheses.semantic(runs)
    pairs = {(r["a"], r["b"]) for r in control["comparisons"]}
    assert ("n-grpo-sampled", "n-grpo") in pairs and ("n-grpo", "n-grpo-sampled") not in pairs
    row = next(r for r in control["comparisons"] if (r["a"], r["b"], r["key"]) ==
               ("n-grpo-sampled", "n-grpo", "diversity/canonical_paths"))  # fmt: skip
    assert row["difference"] == pytest.approx(0.5)
    assert set(control["verdicts"]) == {"n-grpo", "n-grpo-sampled"}


def test_crossover_from_the_means_and_from_the_intervals():
    base = {"1": 0.30, "2": 0.45, "4": 0.60, "8": 0.75, "16": 0.85}
    runs = [
        {"1": 0.50, "2": 0.60, "4": 0.70, "8": 0.74, "16": 0.80},
        {"1": 0.50, "2": 0.60, "4": 0.62, "8": 0.76, "16": 0.80},
        {"1": 0.50, "2": 0.60, "4": 0.72, "8": 0.72, "16": 0.80},
    ]
    # means: k=4 0.68 > 0.60, k=8 0.74 < 0.75 -> 8; CI at k=4: differences 0.10, 0.02, 0.12
    # (sd 0.0529, half 0.131): the lower bound is below 0 -> 4
    assert hypotheses.crossover(base, runs) == {"reaches": 8, "overtakes": 8, "ci": 4}
    # above the base at every k, with no spread: no crossover within the evaluated k
    above = [{k: 0.99 for k in base}] * 3
    assert hypotheses.crossover(base, above) == {"reaches": None, "overtakes": None, "ci": None}
    # both at 100% from k = 8: the base reaches the method there but never overtakes it
    saturated = {**base, "8": 1.0, "16": 1.0}
    tied = hypotheses.crossover(saturated, [{**r, "8": 1.0, "16": 1.0} for r in runs])
    assert (tied["reaches"], tied["overtakes"]) == (8, None)
    assert hypotheses.crossover(base, runs[:1])["ci"] is None  # one seed: no interval


def test_passk_compares_every_method_with_the_base_and_n_grpo_with_grpo():
    curve = {"1": 0.3, "256": 0.9}
    base = {"passk": {s: {"pass@k": curve} for s in ("arith-id", "arith-ood")}}
    per_seed = _per_seed()
    for method, at_256 in (("grpo", (0.80, 0.82, 0.78)), ("n-grpo", (0.88, 0.90, 0.86))):
        for entry, value in zip(per_seed[method], at_256, strict=True):
            entry["passk"] = {s: {"pass@k": {"1": 0.5, "256": value}} for s in base["passk"]}
    found = hypotheses.passk(base, per_seed)
    info = found["arith-id"]
    assert info["k_max"] == 256 and set(info["methods"]) == {"grpo", "n-grpo"}  # stht: not run
    assert info["methods"]["grpo"]["crossover"]["reaches"] == 256
    assert info["vs_grpo"]["n-grpo"]["difference"] == pytest.approx(0.08)
    assert info["vs_grpo"]["n-grpo"]["verdict"] == "better, CI excludes 0"
    assert hypotheses.h2_verdict({"passk": found}) == {"n-grpo": True}
    assert hypotheses.passk({}, per_seed) is None


def test_h3_and_power_by_hand():
    per_seed = _per_seed()
    results = {"base": {"final": per_seed["grpo"][0]["final"], "eval_seed": 0},
               "per_seed": per_seed, "settings": {"final_n": 2}}  # fmt: skip
    found = analyse(results)
    h3 = found["ood"]["n-grpo"]
    assert set(h3["rows"]) == {"arith-ood", "arith-long"} and h3["holds"] is False
    power = found["power"]
    row = next(r for r in power["rows"] if (r["a"], r["b"], r["split"]) ==
               ("n-grpo", "grpo", "arith-id"))  # fmt: skip
    # ID differences 0.01, -0.02, 0.05: sd 0.035119
    assert row["sd"] == pytest.approx(0.035119, abs=1e-6)
    assert row["mde"] == pytest.approx(minimal_detectable_difference(0.035119, 3), abs=1e-6)
    comp = power["components"]
    # sampling: two evaluations with se 0.01 each -> sd sqrt(2e-4); training: the rest
    assert comp["sd_sampling"] == pytest.approx(math.sqrt(2e-4))
    assert comp["sd_training"] == pytest.approx(math.sqrt(0.035119**2 - 2e-4), abs=1e-6)
    one, two, four = comp["options"]
    assert one["seeds"] >= two["seeds"] >= four["seeds"]  # fewer seeds with more problems ...
    # ... each costing 3 methods x seeds x (60 s training + 20 s x scale evaluation)
    assert one["compute_s"] == pytest.approx(one["seeds"] * 3 * 80.0)
    assert four["compute_s"] == pytest.approx(four["seeds"] * 3 * 140.0)


def test_report_states_each_hypothesis_before_its_verdict():
    per_seed = _per_seed()
    results = {
        "settings": {"out": "o", "seeds": [0, 1, 2], "steps": 20, "final_limit": 100,
                     "final_n": 2, "full": False, "preset": "default"},
        "seeds": [0, 1, 2],
        "methods": {k: {"label": k.upper(), "config": "c", "overrides": []} for k in per_seed},
        "base": {"final": per_seed["grpo"][0]["final"], "eval_seed": 0}, "per_seed": per_seed,
        "environment": {"platform": "linux", "cpus": 2, "cuda": False, "python": "3.11",
                        "torch": "2.13.0", "transformers": "5.25.0", "accelerate": "1.16.0"},
        "timings": {"training": 1.0}, "wall_seconds": 1.0, "plots": {},
        "probe": {"config": {"seed": 0, "seeds": [0]}, "rows": []},
    }  # fmt: skip
    results.update(analyse(results))
    report = render_report(results)
    for name in ("H1", "H3"):
        statement = report.index(f"## {name}")
        assert report.index("**Hypothesis.**", statement) < report.index(f"→ {name}", statement)
    assert "→ H1 **supported**" in report and "→ H3 **not supported**" in report
    assert "Not measured in this run" in report  # H2 without the large-k evaluation
    assert "`pip install torch==2.13.0 transformers==5.25.0 accelerate==1.16.0`" in report
    assert "target is **not met**" in report  # MDE with 3 noisy seeds is far above 3 points


def test_a_finished_unit_is_reused_only_with_the_same_inputs(tmp_path):
    calls = []

    def compute() -> dict:
        calls.append(1)
        return {"value": len(calls)}

    path = tmp_path / "runs" / "unit.json"
    assert _cached(path, {"seed": 1, "splits": ("a", "b")}, compute) == {"value": 1}
    assert _cached(path, {"seed": 1, "splits": ("a", "b")}, compute) == {"value": 1}  # re-used
    assert _cached(path, {"seed": 2, "splits": ("a", "b")}, compute) == {"value": 2}  # other inputs
    path.write_text("{ truncated")
    assert _cached(path, {"seed": 2, "splits": ("a", "b")}, compute) == {"value": 3}
    assert len(calls) == 3 and not list(path.parent.glob("*.tmp"))
