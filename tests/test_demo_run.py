"""The demo end to end at a tiny budget: the same results for any --jobs, and finished units
re-used by a later run into the same directory."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ngrpo.study.demo import run_demo
from ngrpo.study.settings import DemoSettings


def _tiny(out) -> DemoSettings:
    quick = DemoSettings.quick(out)
    return dataclasses.replace(
        quick, steps=2, eval_every=2, curve_limit=4, final_limit=4, final_n=2, probe_problems=2,
        probe_n=2, probe_shifts=(0.1,), passk_n=4, passk_limit=2, passk_seeds=1,
    )  # fmt: skip


def _strip(value):
    """Results without what may differ between runs: times and paths."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in ("seconds", "run_dir")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


@pytest.mark.slow
def test_results_do_not_depend_on_jobs_and_finished_units_are_reused(tmp_path):
    one = run_demo(_tiny(tmp_path / "one"), jobs=1)
    two = run_demo(_tiny(tmp_path / "two"), jobs=2)
    for key in ("base", "per_seed", "probe", "comparisons", "semantic", "passk"):
        assert _strip(one[key]) == _strip(two[key]), key
    assert {"diversity/canonical_paths", "diversity/rephrase_pairs"} <= set(
        one["per_seed"]["grpo"][0]["diversity"]
    )
    assert set(one["passk"]["arith-id"]["methods"]) == {"grpo", "n-grpo", "stht"}
    # a second run into the same directory computes nothing again ...
    units = sorted((tmp_path / "one" / "runs").glob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in units]
    again = run_demo(_tiny(tmp_path / "one"), jobs=1)
    assert [p.stat().st_mtime_ns for p in units] == stamps
    assert _strip(again["per_seed"]) == _strip(one["per_seed"])
    # ... unless a unit's settings changed: only the units that depend on them are redone
    changed = dataclasses.replace(_tiny(tmp_path / "one"), final_n=4)
    run_demo(changed, jobs=1)
    saved = json.loads((tmp_path / "one" / "runs" / "grpo-seed0.json").read_text())
    assert saved["inputs"]["final_n"] == 4 and saved["result"]["final"]["arith-id"]["n"] == 4
    probe = tmp_path / "one" / "runs" / "probe-seed0.json"
    assert probe.stat().st_mtime_ns == stamps[units.index(probe)]  # the probe does not use it
