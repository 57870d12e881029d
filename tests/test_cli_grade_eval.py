"""`ngrpo grade` and `ngrpo eval` end to end (tiny random Qwen2 saved to a temporary directory)."""

from __future__ import annotations

import argparse
import json

import pytest
from factories import tiny_qwen2

from ngrpo.cli import eval as eval_cli
from ngrpo.cli import grade as grade_cli
from ngrpo.utils.errors import NgrpoError


def run(argv: list[str]) -> int:
    """Parse and run one of this file's commands, as `ngrpo.cli.main` does."""
    parser = argparse.ArgumentParser(prog="ngrpo")
    subparsers = parser.add_subparsers(dest="command", required=True)
    grade_cli.register(subparsers)
    eval_cli.register(subparsers)
    args = parser.parse_args(argv)
    return args.func(args)


def test_grade_single(capsys):
    response = "<think> x </think> \\boxed{\\frac12}"
    assert run(["grade", "--answer", "0.5", "--response", response]) == 0
    assert capsys.readouterr().out == "correct\n"
    run(["grade", "--answer", "3", "--response", "\\boxed{4}", "-v"])
    assert capsys.readouterr().out.splitlines()[:2] == ["incorrect", "extracted: 4"]
    run(["grade", "--answer", "B", "--response", "Answer: B", "--grader", "multiple_choice"])
    assert capsys.readouterr().out == "correct\n"


def test_grade_file(tmp_path, capsys):
    rows = [
        {"id": 1, "output": "\\boxed{\\dfrac{1}{2}}", "gold": "0.5"},
        {"id": 2, "output": "#### 1,000", "gold": "1000"},
        {"id": 3, "output": "no answer at all", "gold": "7"},
    ]
    source = tmp_path / "gen.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "graded.jsonl"
    argv = ["grade", "--file", str(source), "--out", str(out), "--response-field", "output"]
    assert run(argv + ["--answer-field", "gold", "--workers", "1"]) == 0
    graded = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(g["id"], g["extracted"], g["correct"]) for g in graded] == [
        (1, "\\dfrac{1}{2}", True), (2, "1,000", True), (3, None, False),
    ]  # fmt: skip
    assert "accuracy: 0.6667 (2/3)" in capsys.readouterr().out
    with pytest.raises(NgrpoError, match=r"gen\.jsonl:1: no field 'response'"):
        run(["grade", "--file", str(source), "--out", str(out)])


def test_grade_usage_errors(tmp_path):
    with pytest.raises(NgrpoError, match="either"):
        run(["grade"])
    with pytest.raises(NgrpoError, match="both"):
        run(["grade", "--answer", "1"])
    with pytest.raises(NgrpoError, match="--out"):
        run(["grade", "--file", str(tmp_path / "x.jsonl")])


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from ngrpo.models.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    path = tmp_path_factory.mktemp("tiny")
    tiny_qwen2(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_eval_writes_summary_and_samples_and_resumes(tiny_model_dir, tmp_path, capsys):
    bench_file = tmp_path / "mine.jsonl"
    bench_file.write_text(json.dumps({"question": "Tom has 3 apples .", "answer": "3"}) + "\n")
    out = tmp_path / "res" / "results.json"
    argv = [
        "eval", "--model", str(tiny_model_dir), "--bench", "arith-id", str(bench_file),
        "--n", "2", "--max-new-tokens", "4", "--batch-size", "4", "--limit", "2",
        "--out", str(out), "--device", "cpu",
    ]  # fmt: skip
    assert run(argv) == 0
    printed = capsys.readouterr().out
    assert "pass@2" in printed and "arith-id" in printed
    result = json.loads(out.read_text())
    assert set(result["benchmarks"]) == {"arith-id", "mine"}
    summary = result["benchmarks"]["arith-id"]
    assert set(summary) == {"num_problems", "n", "mean@n", "pass@k", "maj@n", "unparsed"}
    assert (summary["num_problems"], summary["n"], set(summary["pass@k"])) == (2, 2, {"1", "2"})
    assert result["benchmarks"]["mine"]["num_problems"] == 1
    assert result["config"]["mixing"] == "off" and result["config"]["n"] == 2
    samples_file = out.with_name("results.samples.jsonl")
    rows = [json.loads(line) for line in samples_file.read_text().splitlines()]
    assert len(rows) == 2 * 2 + 1 * 2
    assert set(rows[0]) == {"benchmark", "problem_id", "sample", "response", "extracted", "correct"}

    # same --out: finished problems are skipped, only the new ones (limit 3) are generated
    assert run(argv[:-6] + ["--limit", "3", "--out", str(out), "--device", "cpu"]) == 0
    rows_after = [json.loads(line) for line in samples_file.read_text().splitlines()]
    assert rows_after[: len(rows)] == rows
    assert len(rows_after) == len(rows) + 2  # one more arith-id problem; `mine` has only one
    assert json.loads(out.read_text())["benchmarks"]["arith-id"]["num_problems"] == 3

    with pytest.raises(NgrpoError, match=r"other settings \(n: 2 -> 3"):
        run([("3" if a == "2" and argv[i - 1] == "--n" else a) for i, a in enumerate(argv)])


def test_eval_errors(tiny_model_dir, tmp_path):
    with pytest.raises(NgrpoError, match="unknown benchmark"):
        run(["eval", "--model", str(tiny_model_dir), "--bench", "nope", "--out", str(tmp_path)])
    with pytest.raises(NgrpoError, match="does not exist"):
        run(["eval", "--model", str(tmp_path / "none"), "--bench", "arith-id", "--limit", "1"])
