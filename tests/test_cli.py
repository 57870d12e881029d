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


def test_build_base_reuses_and_prints_the_directory_last(capsys, base_model_dir, monkeypatch):
    code, out, _ = run_cli(capsys, "build-base", "--out", str(base_model_dir))
    assert code == 0
    assert out.strip().splitlines()[-1] == str(base_model_dir)
    assert "ID pass@1" in out
