"""The demo's units: stage order, finished units read back without computing (`--report-only`),
the long setting's statistics and the diagnosis decision rule, on hand-made unit results."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ngrpo.cli import main
from ngrpo.models.base_model import SHIPPED_SHA256
from ngrpo.study.demo import run_demo
from ngrpo.study.long_study import diagnose, long_lines, summarize_long
from ngrpo.study.settings import DemoSettings
from ngrpo.study.units import base_spec, cached, run_spec, to_compute, units_by_stage

SHA = SHIPPED_SHA256["model.safetensors"]


def _full(out: Path, **changes) -> DemoSettings:
    return dataclasses.replace(DemoSettings.default(out, full=True), **changes)


def test_stages_order_units_by_value_and_can_be_chosen():
    settings = _full(Path("o"), seeds=tuple(range(5)), long_seeds=2, probe_seeds=1)
    by_stage = units_by_stage(settings)
    # long: GRPO and N-GRPO (release) seed by seed
    assert by_stage["long"] == [
        ("run", "grpo", 0, 100), ("run", "n-grpo", 0, 100),
        ("run", "grpo", 1, 100), ("run", "n-grpo", 1, 100),
    ]  # fmt: skip
    # diagnosis: method by method (a finished method is a complete answer), in long_methods order
    assert [u[1:3] for u in by_stage["diagnosis"][:4]] == [
        ("n-grpo-anneal", 0), ("n-grpo-anneal", 1), ("n-grpo-full", 0), ("n-grpo-full", 1),
    ]  # fmt: skip
    assert len(by_stage["diagnosis"]) == 5 * 2
    # main: every 20-step method seed by seed, the probe on its seeds
    assert by_stage["main"][:7] == [
        *(("run", k, 0, 20) for k in settings.methods), ("probe", "", 0, 0),
    ]  # fmt: skip
    assert len(by_stage["main"]) == 5 * len(settings.methods) + 1
    assert to_compute(settings) == by_stage["long"] + by_stage["diagnosis"] + by_stage["main"]
    chosen = dataclasses.replace(settings, stages=("main", "long"))
    assert to_compute(chosen) == by_stage["main"] + by_stage["long"]
    assert to_compute(dataclasses.replace(settings, stages=())) == []


def test_large_k_evaluation_after_the_long_training_only_when_asked():
    settings = _full(Path("o"))
    base = {"sha256": SHA}
    assert run_spec("grpo", 0, 20, settings, base)[2]["passk"] is not None
    assert run_spec("grpo", 10, 20, settings, base)[2]["passk"] is None  # beyond passk_seeds
    assert run_spec("grpo", 0, 100, settings, base)[2]["passk"] is None
    on = dataclasses.replace(settings, long_passk=True)
    assert run_spec("grpo", 0, 100, on, base)[2]["passk"] is not None
    name, path, inputs = run_spec("n-grpo-anneal", 3, 100, settings, base)
    assert name == "n-grpo-anneal-100steps-seed3" and path == Path("o/runs") / f"{name}.json"
    assert "exploration.mix_rate_schedule=linear" in inputs["method"]["overrides"]


def _split(mean: float) -> dict:
    return {"mean@n": mean, "mean@n_se": 0.01, "pass@k": {"1": mean, "2": mean}}


def _long_entry(id_mean: float, acc: float, steps: int = 12) -> dict:
    series = {
        "reward/accuracy": [acc] * steps,
        "rollout/mixed_frac": [0.1] * steps,
        "embedding/drift": [0.01 * (i + 1) for i in range(steps)],
    }
    return {
        "final": {"arith-id": _split(id_mean), "arith-ood": _split(id_mean / 2)},
        "curve": [(0, 0.4), (6, id_mean)], "diversity": {}, "series": series,
        "seconds": {"training": 200.0, "evaluation": 20.0},
    }  # fmt: skip


def _write_long(settings: DemoSettings, key: str, seed: int, entry: dict) -> None:
    _, path, inputs = run_spec(key, seed, settings.long_steps, settings, {"sha256": SHA})
    cached(path, inputs, lambda: entry)


def test_report_only_reads_finished_units_and_lists_the_pending(tmp_path):
    settings = _full(tmp_path / "study", seeds=tuple(range(5)), long_seeds=3)
    base = {"final": {"arith-id": _split(0.4), "arith-ood": _split(0.2)}, "curve_start": 0.4,
            "eval_seed": 0, "seconds": {"evaluation": 30.0}}  # fmt: skip
    path, inputs = base_spec(settings, SHA)
    cached(path, inputs, lambda: base)
    for seed, (g, n) in enumerate([(0.60, 0.55), (0.62, 0.56), (0.58, 0.55)]):
        _write_long(settings, "grpo", seed, _long_entry(g, 0.56))
        _write_long(settings, "n-grpo", seed, _long_entry(n, 0.51))
    _write_long(settings, "n-grpo-anneal", 0, _long_entry(0.6, 0.55))
    _write_long(settings, "n-grpo-anneal", 2, _long_entry(0.6, 0.55))  # seed 1 missing
    _write_long(settings, "n-grpo-full", 0, _long_entry(0.58, 0.55))
    stale = dataclasses.replace(settings, final_n=4)  # a unit of other settings is not re-used
    _, path, inputs = run_spec("n-grpo-nograd", 0, 100, stale, {"sha256": SHA})
    cached(path, inputs, lambda: _long_entry(0.9, 0.9))
    results = run_demo(dataclasses.replace(settings, stages=()))
    assert results["seeds"] == [] and results["per_seed"] == {} and "summary" not in results
    assert [e["seed"] for e in results["long"]["grpo"]] == [0, 1, 2]
    assert [e["seed"] for e in results["long"]["n-grpo-anneal"]] == [0]  # the leading seeds
    assert "n-grpo-nograd" not in results["long"]
    pending = results["pending"]
    assert "n-grpo-anneal-100steps-seed1" in pending["diagnosis"]
    assert "n-grpo-nograd-100steps-seed0" in pending["diagnosis"]
    assert len(pending["main"]) == 5 * len(settings.methods) + 5 and "long" not in pending
    assert results["timings"]["long training"] == 6 * 200.0
    assert results["timings"]["diagnosis training"] == 2 * 200.0  # anneal seed 0, full seed 0
    gap = results["long_summary"]["diagnosis"]["gap"]
    assert gap["seeds"] == 3 and gap["difference"] == pytest.approx(-0.0467, abs=1e-4)
    assert gap["mde"] is not None
    report = (tmp_path / "study" / "report.md").read_text()
    assert "## Long training and diagnosis" in report and "## Pending" in report
    assert "No seed of the 20-step comparison has finished yet" in report
    assert "- N-GRPO (full release) (`exploration.neighbor_table=output" in report
    assert "--report-only" in report and "long_accuracy.png" in report


def test_cli_report_only_without_a_finished_base_is_one_error_line(tmp_path, capsys):
    code = main(["demo", "--full", "--report-only", "--out", str(tmp_path / "none")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "no finished base evaluation" in err[-1]


def _row(a: str, b: str, d: float, low: float, high: float, seeds: int = 10, mde=0.02) -> dict:
    return {"a": a, "b": b, "split": "arith-id", "difference": d, "ci": [low, high],
            "seeds": seeds, "mde": mde}  # fmt: skip


def test_diagnosis_decision_rule():
    rows = [
        _row("n-grpo", "grpo", -0.06, -0.09, -0.03),
        # closes: above N-GRPO (release), not below GRPO
        _row("n-grpo-anneal", "n-grpo", 0.05, 0.02, 0.08),
        _row("n-grpo-anneal", "grpo", -0.01, -0.04, 0.02),
        # part: above N-GRPO (release), still below GRPO
        _row("n-grpo-gate", "n-grpo", 0.03, 0.01, 0.05),
        _row("n-grpo-gate", "grpo", -0.03, -0.05, -0.01),
        # not: within noise of N-GRPO (release) with an MDE below the gap
        _row("n-grpo-output", "n-grpo", 0.0, -0.02, 0.02),
        _row("n-grpo-output", "grpo", -0.06, -0.08, -0.04),
        # undecided: an MDE above the gap, or too few seeds
        _row("n-grpo-nograd", "n-grpo", 0.0, -0.1, 0.1, mde=0.12),
        _row("n-grpo-nograd", "grpo", -0.06, -0.2, 0.1),
        _row("n-grpo-full", "n-grpo", 0.05, 0.02, 0.08, seeds=3),
        _row("n-grpo-full", "grpo", 0.0, -0.1, 0.1, seeds=3),
    ]  # fmt: skip
    found = {m: v["verdict"] for m, v in diagnose(rows)["switches"].items()}
    assert found == {
        "n-grpo-anneal": "closes the gap", "n-grpo-gate": "closes part of the gap",
        "n-grpo-output": "does not close the gap", "n-grpo-nograd": "undecided",
        "n-grpo-full": "undecided",
    }  # fmt: skip


def test_long_summary_pairs_the_seeds_both_methods_finished():
    long = {
        "grpo": [{**_long_entry(0.6, 0.5), "seed": s} for s in range(3)],
        "n-grpo": [{**_long_entry(0.5, 0.4), "seed": s} for s in range(2)],
    }
    summary = summarize_long(long)
    row = next(r for r in summary["comparisons"] if r["split"] == "arith-id")
    assert row["seeds"] == 2 and row["difference"] == pytest.approx(-0.1)
    late = {r["key"]: r for r in summary["mechanism"]}
    assert late["reward/accuracy"]["difference"] == pytest.approx(-0.1)
    # the start and end windows are the first and last 10 steps
    drift = summary["methods"]["grpo"]
    assert drift["start"]["embedding/drift"][0] == pytest.approx(0.055)
    assert drift["end"]["embedding/drift"][0] == pytest.approx(0.075)
    # the plotted series: each seed's trailing 10-step moving average
    assert drift["series"]["embedding/drift"][1][0] == pytest.approx(0.015)
    assert drift["series"]["embedding/drift"][11][0] == pytest.approx(0.075)
    long["n-grpo"][1]["seed"] = 5  # not the same leading seeds: refuse to pair
    with pytest.raises(ValueError, match="same leading seeds"):
        summarize_long(long)


def _series_entry(seed: int, drift_end: float, synonym: tuple[float, float], acc: float) -> dict:
    """A 20-step long run whose first and last 10 steps hold constant diagnostics."""
    entry = {**_long_entry(0.6, acc, steps=20), "seed": seed}
    entry["series"] = {
        **entry["series"],
        "embedding/drift": [0.01] * 10 + [drift_end] * 10,
        "rollout/neighbor_synonym_frac": [synonym[0]] * 10 + [synonym[1]] * 10,
        "diversity/zero_adv_frac": [0.2] * 10 + [0.3 if acc > 0.53 else 0.4] * 10,
    }
    return entry


@pytest.mark.parametrize("refuted", [True, False])
def test_premise_checks_follow_the_rules_written_with_the_hypotheses(refuted):
    jitter = (0.0, 0.004, -0.003, 0.002)  # per-seed noise, so the paired intervals have width
    long = {
        "grpo": [_series_entry(s, 0.04 + j, (0.9, 0.9), 0.56 + j) for s, j in enumerate(jitter)],
        "n-grpo": [
            # refuted: drift as GRPO's and synonyms rising; else more drift and falling synonyms
            _series_entry(s, (0.04 if refuted else 0.08) + j,
                          (0.91, (0.94 if refuted else 0.80) + j), 0.50 + j)
            for s, j in enumerate(reversed(jitter))
        ],
    }  # fmt: skip
    summary = summarize_long(long)
    premises = summary["premises"]
    status = "refuted by the logs" if refuted else "holds"
    assert premises["D2"]["status"] == status and premises["D3"]["status"] == status
    synonym = premises["D3"]["evidence"]["synonym fraction end − start, N-GRPO (release)"]
    assert synonym["difference"] == pytest.approx((0.03 if refuted else -0.11) + sum(jitter) / 4)
    # D1: rollout accuracy 6 points below GRPO and zero-advantage groups 10 points above: seen
    assert premises["D1"]["status"] == "holds"
    assert premises["D4"]["evidence"]["mixed fraction end"] == pytest.approx(0.1)
    lines = "\n".join(long_lines(summary, {"grpo": "GRPO", "n-grpo": "N-GRPO (release)"},
                                  {"long_steps": 20}))  # fmt: skip
    assert f"**D2's premise** ({status})" in lines and f"**D3's premise** ({status})" in lines
    assert "**D0** (no real gap) is not rejected" in lines  # equal final accuracy: no gap
