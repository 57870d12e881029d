"""The command line: help for every command, and one-line errors with a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ngrpo.cli import COMMANDS, main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_every_command():
    result = subprocess.run(
        [sys.executable, "-m", "ngrpo", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("build-base", "demo", "train", "eval", "grade", "bench", "neighbors", "probe"):
        assert command in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_its_own_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: ngrpo {command}" in capsys.readouterr().out


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_task_export_and_unknown_split(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "task", "--split", "arith-id", "--num", "3")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(rows) == 3 and set(rows[0]) == {"problem", "answer", "solution"}
    code, _, err = run_cli(capsys, "task", "--split", "arith-xx")
    assert_one_line_error(code, err, "unknown task split 'arith-xx'", "arith-id")
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run_cli(capsys, "task", "--split", "arith-id", "--out", str(blocker / "x.jsonl"))
    assert_one_line_error(code, err, "cannot write")


def test_build_base_bad_seed_and_unwritable_output(capsys, tmp_path):
    code, _, err = run_cli(capsys, "build-base", "--seed", "-1", "--out", str(tmp_path / "b"))
    assert_one_line_error(code, err, "seed must be a non-negative integer")
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run_cli(capsys, "build-base", "--out", str(blocker / "base"))
    assert_one_line_error(code, err, "cannot write")


def test_neighbors_without_a_model(capsys, tmp_path):
    code, _, err = run_cli(capsys, "neighbors", "--model", str(tmp_path), "--token", "7")
    assert_one_line_error(code, err, "no config.json")
    code, _, err = run_cli(capsys, "neighbors", "--model", str(tmp_path / "no"), "--token", "7")
    assert_one_line_error(code, err, "does not exist")


def test_neighbors_on_the_base_model(capsys, base_model_dir):
    code, out, _ = run_cli(
        capsys, "neighbors", "--model", str(base_model_dir), "--token", "7", "--k", "3"
    )
    assert code == 0
    ranks = [line.split("│")[1].strip() for line in out.splitlines() if line.count("│") >= 4]
    assert ranks == ["1", "2", "3"]
    code, out, _ = run_cli(
        capsys, "neighbors", "--model", str(base_model_dir), "--token", "7", "--metric", "l2"
    )
    assert code == 0 and "by l2" in out
    code, _, err = run_cli(capsys, "neighbors", "--model", str(base_model_dir), "--token", "zebra")
    assert_one_line_error(code, err, "cannot encode 'zebra'")
    code, _, err = run_cli(capsys, "neighbors", "--model", str(base_model_dir), "--token", "1 2")
    assert_one_line_error(code, err, "encodes to 2 tokens")


def test_build_base_reuses_compares_and_prints_the_directory_last(capsys, base_model_dir, tmp_path):
    import shutil

    copy = tmp_path / "base"
    shutil.copytree(base_model_dir, copy)  # a complete build: re-used, not rebuilt
    code, out, _ = run_cli(capsys, "build-base", "--out", str(copy))
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[-1] == str(copy) and "ID pass@1" in lines[0]
    assert lines[1] == "shipped base (sha256 52ab9910ac21…): identical weights"


def test_build_base_says_how_far_a_rebuild_lands_from_the_shipped_base():
    from ngrpo.cli.build_base import distance_line

    accuracy = {"arith-id": {"pass@1": 0.279}, "arith-ood": {"pass@1": 0.171}}
    line = distance_line({
        "identical": False, "max_abs_diff": 0.4123, "mean_abs_diff": 0.0312,
        "largest_in": "lm_head.weight", "shipped_accuracy_t1": accuracy,
        "accuracy_t1": {"arith-id": {"pass@1": 0.19}, "arith-ood": {"pass@1": 0.1}},
    })  # fmt: skip
    assert line == (
        "shipped base (sha256 52ab9910ac21…): differs, max |Δ weight| 0.412 (in lm_head.weight), "
        "mean |Δ weight| 0.0312; recorded accuracy at temperature 1.0: arith-id pass@1 0.190 here "
        "vs 0.279, arith-ood pass@1 0.100 here vs 0.171"
    )
    other = {"identical": False, "max_abs_diff": None}
    assert distance_line(other).endswith("differs (other architecture or parameters)")
