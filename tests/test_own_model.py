"""Your own model and data, without silent surprises: the position limit, evaluation and output
defaults that follow the data and the method, `reward/accuracy` from the graders, and the error
lines a new user meets (empty data, no tokenizer, a reward function that raises). The model and
data are those of `examples/own_model/` (a BPE tokenizer of its own, a random Llama)."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from factories import tiny_lm

from ngrpo.cli import main
from ngrpo.config import load_config, save_config
from ngrpo.utils.errors import NgrpoError

EXAMPLE = Path(__file__).parents[1] / "examples" / "own_model"


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"own_model_{name}", EXAMPLE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def own_model(tmp_path_factory) -> Path:
    return _example("make_model").main(tmp_path_factory.mktemp("own") / "model")


@pytest.fixture(scope="module")
def own_data(tmp_path_factory) -> Path:
    return _example("make_data").main(tmp_path_factory.mktemp("own") / "data")


def _squash(text: str) -> str:
    """`text` without whitespace: rich wraps long lines anywhere, paths included."""
    return "".join(text.split())


def _mine(model: Path, data: Path) -> list[str]:
    return ["--config", "config.yaml", f"model.path={model}", f"data.train={data}/train.parquet"]


# --------------------------------------------------------------------------- position limit


def test_train_refuses_a_budget_past_the_positions_and_leaves_no_directory(
    own_model, own_data, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(EXAMPLE)  # config.yaml's reward files are relative to it
    run_dir = tmp_path / "runs" / "long"
    argv = ["train", *_mine(own_model, own_data), "rollout.max_completion_length=400",
            f"output_dir={run_dir}"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "data.max_prompt_length (64) + rollout.max_completion_length (400) = 464 tokens " in err
    assert "exceed the model's 256 positions" in err and "at most 192" in err
    assert not (tmp_path / "runs").exists()  # the failed start removed what it had created


def test_train_refuses_an_evaluation_budget_past_the_positions_at_its_start(
    own_model, own_data, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(EXAMPLE)
    argv = ["train", *_mine(own_model, own_data), f"data.eval_sets={own_data}/test.jsonl",
            "eval.max_new_tokens=300", "eval.at_start=false", "eval.every=1",
            f"output_dir={tmp_path / 'run'}"]  # fmt: skip
    assert main(argv) == 2
    err = _squash(capsys.readouterr().err)
    assert _squash("+ eval.max_new_tokens (300) =") in err and "themodel's256positions" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # before any step


def test_evaluate_refuses_a_prompt_and_budget_past_the_positions(embedded_tokenizer):
    from ngrpo.data import load_benchmark
    from ngrpo.evaluation import evaluate

    tok = embedded_tokenizer
    model = tiny_lm(len(tok), max_positions=64, eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id)  # fmt: skip
    examples = load_benchmark("arith-id", limit=2).examples
    with pytest.raises(NgrpoError, match=r"the longest prompt \(\d+\) \+ max_new_tokens \(64\) = "
                       r"\d+ tokens exceed the model's 64 positions"):  # fmt: skip
        evaluate(model, tok, examples, n=1, max_new_tokens=64)


def test_eval_fits_its_default_budget_and_without_out_writes_nothing(
    embedded_tokenizer, tmp_path, monkeypatch, capsys
):
    from ngrpo.data import load_benchmark
    from ngrpo.evaluation import build_prompts

    tok = embedded_tokenizer
    problem = load_benchmark("arith-id", limit=1).examples[0].problem
    longest = len(build_prompts(tok, [problem])[0])
    model_dir = tmp_path / "short"
    tiny_lm(len(tok), max_positions=longest + 4, eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id).save_pretrained(model_dir)  # fmt: skip
    tok.save_pretrained(model_dir)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    argv = ["eval", "--model", str(model_dir), "--bench", "arith-id", "--limit", "1", "--n", "1",
            "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    out = _squash(capsys.readouterr().out)
    assert _squash(f"--max-new-tokens 4 (the model's {longest + 4} positions minus") in out
    assert "nothingwritten" in out and list(cwd.iterdir()) == []
    assert main([*argv, "--max-new-tokens", "5"]) == 2  # asked for: refused, not lowered
    assert "exceed the model's" in capsys.readouterr().err


def test_plan_checks_positions_and_plans_for_this_machine_in_mb(own_model, capsys):
    config = str(EXAMPLE / "config.yaml")
    mine = [f"model.path={own_model}", "data.train=unused.jsonl"]
    assert main(["plan", "--config", config, *mine]) == 0
    out = _squash(capsys.readouterr().out)
    here = ("cuda", "bfloat16") if torch.cuda.is_available() else ("cpu", "float32")
    assert _squash(f"parameters (125,248 trained), {here[0]}, ddp × 1, {here[1]}") in out
    assert "0.13Mparameters" in out and "MBperprocess" in out and "0.00" not in out
    assert main(["plan", "--config", config, *mine, "--device", "cuda"]) == 0
    assert "cuda,ddp×1,bfloat16" in _squash(capsys.readouterr().out)
    assert main(["plan", "--config", config, *mine, "rollout.max_completion_length=400"]) == 2
    assert "exceed the model's 256 positions" in capsys.readouterr().err


# ----------------------------------------------------------------------------- config defaults


def test_evaluation_and_output_dir_follow_the_data_and_the_method(tmp_path):
    from ngrpo.cli.train import _evaluation_line

    own = load_config(None, ["data.train=mine.jsonl"])
    assert (own.output_dir, own.data.eval_sets) == ("runs/grpo", [])
    assert _evaluation_line(own) == "evaluation: none (data.eval_sets is empty)"
    embedded = load_config(None, ["exploration.strategy=neighbor"])
    assert embedded.output_dir == "runs/ngrpo"
    assert embedded.data.eval_sets == ["arith-id", "arith-ood"]
    assert _evaluation_line(embedded).startswith("evaluation: arith-id, arith-ood (4 samples")
    assert load_config(None, ["exploration.strategy=gaussian"]).output_dir == "runs/stht"
    named = load_config(None, ["data.train=mine.jsonl", "data.eval_sets=math500", "output_dir=x"])
    assert (named.output_dir, named.data.eval_sets) == ("x", ["math500"])
    # the resolved values are what config.yaml records (a resume reads them back unchanged)
    assert load_config(save_config(own, tmp_path / "c.yaml")).data.eval_sets == []
    with pytest.raises(NgrpoError, match="eval.best_metric=eval/x/pass@1 but nothing is evaluated"):
        load_config(None, ["data.train=mine.jsonl", "eval.best_metric=eval/x/pass@1"])


def test_rewards_null_on_the_command_line_clears_the_list():
    cfg = load_config("tiny_grpo", ["train.rewards=[{fn: exact}]", "train.rewards=null"])
    assert cfg.train.rewards == [] and cfg.train.reward_items() == [("math", 1.0)]
    assert load_config(None, ["train.rewards=~"]).train.rewards == []


# ----------------------------------------------------------------------------------- errors


def test_an_empty_data_file_says_no_rows_before_any_model_is_loaded(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ngrpo.data import load_benchmark

    empty_jsonl = tmp_path / "empty.jsonl"
    empty_jsonl.write_text("\n")
    empty_parquet = tmp_path / "empty.parquet"
    columns = {"prompt": pa.array([], pa.string()), "answer": pa.array([], pa.string())}
    pq.write_table(pa.table(columns), empty_parquet)
    for path in (empty_jsonl, empty_parquet):
        with pytest.raises(NgrpoError, match=f"{path}: no rows"):
            load_benchmark(path)
    argv = ["train", "--config", "tiny_grpo", f"data.train={empty_parquet}",
            f"model.path={tmp_path / 'no-model'}", f"output_dir={tmp_path / 'run'}"]  # fmt: skip
    assert main(argv) == 2
    assert f"error: {empty_parquet}: no rows" in capsys.readouterr().err  # not the model's error


def test_a_model_directory_without_tokenizer_files_names_them(own_model, tmp_path):
    from ngrpo.models.load import load_tokenizer

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(own_model / name, bare / name)
    with pytest.raises(NgrpoError, match=r"has no tokenizer files: looked for tokenizer.json, "
                       r"tokenizer.model, vocab.json, vocab.txt, spiece.model; save"):  # fmt: skip
        load_tokenizer(bare)
    shutil.copy(own_model / "tokenizer_config.json", bare / "tokenizer_config.json")
    with pytest.raises(NgrpoError, match=r"\(tokenizer_config.json alone defines none\)"):
        load_tokenizer(bare)


RAISING = """\
def helper(value):
    return 1 / value


def boom(completions, **kwargs):
    return [helper(0) for _ in completions]


def shaping(completions, **kwargs):
    return [0.1 for _ in completions]
"""


@pytest.fixture(scope="module")
def pool():
    from ngrpo.rewards import GradingPool

    with GradingPool(num_workers=1) as grading_pool:
        yield grading_pool


def _compute(items, pool, completions, answers):
    from ngrpo.rewards.functions import build_reward_set

    rewards = build_reward_set(items, pool=pool)
    try:
        n = len(completions)
        return rewards.compute(completions, ["p"] * n, [{}] * n, answers)
    finally:
        rewards.close()


def test_a_raising_reward_names_its_file_and_line_and_logs_the_traceback_at_debug(
    tmp_path, pool, caplog
):
    path = tmp_path / "mine.py"
    path.write_text(RAISING)
    with pytest.raises(NgrpoError) as err:
        _compute([(f"{path}:boom", 1.0)], pool, ["a"], ["1"])
    message = str(err.value)
    assert f"raised ZeroDivisionError: division by zero at {path}:2 in helper" in message
    assert "--log-level DEBUG shows the full traceback" in message
    caplog.set_level(logging.DEBUG, logger="ngrpo.rewards.user")
    with pytest.raises(NgrpoError):
        _compute([(f"{path}:boom", 1.0)], pool, ["a"], ["1"])
    assert "Traceback (most recent call last)" in caplog.text
    assert f'File "{path}", line 6, in boom' in caplog.text


def test_accuracy_is_the_graders_share_of_correct_answers_not_of_positive_totals(tmp_path, pool):
    path = tmp_path / "mine.py"
    path.write_text(RAISING)
    completions, answers = ["\\boxed{7}", "\\boxed{3}", "none", "\\boxed{2}"], ["7", "8", "9", "1"]
    items = [("math", 1.0), (f"{path}:shaping", 1.0)]
    totals, metrics = _compute(items, pool, completions, answers)
    assert all(t > 0 for t in totals)  # the shaping term makes every total positive
    assert metrics["reward/accuracy"] == 0.25  # one answer of four is right
    _, metrics = _compute([(f"{path}:shaping", 1.0)], pool, completions, answers)
    assert "reward/accuracy" not in metrics  # no grader: nothing says what is correct


# --------------------------------------------------------------------- a run of your own


def test_own_model_trains_evaluates_its_own_data_and_resumes(
    own_model, own_data, tmp_path, monkeypatch, capsys
):
    """Rewards: the `math` grader + two shaping terms (`examples/own_model/rewards.py`)."""
    from transformers import AutoTokenizer

    from ngrpo.models.load import load_tokenizer

    monkeypatch.chdir(EXAMPLE)
    run_dir = tmp_path / "run"
    small = ["rollout.num_generations=2", "rollout.max_completion_length=8",
             "train.prompts_per_step=2", "train.mini_batch_prompts=2", "eval.limit=1", "eval.n=1",
             "eval.max_new_tokens=4", "eval.every=0"]  # fmt: skip
    argv = ["train", *_mine(own_model, own_data), *small, f"output_dir={run_dir}", "train.steps=1",
            f"data.eval_sets={own_data / 'test.jsonl'}"]  # fmt: skip
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert _squash(f"evaluation: {own_data / 'test.jsonl'} (1 sample per problem") in _squash(err)
    assert "last evaluation (%)" in out and "eval/test/unparsed" in out
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evaluation, step = rows
    assert set(evaluation) >= {"eval/test/mean@n", "eval/test/unparsed"}  # named by the stem
    assert step["reward/accuracy"] == step["reward/math"]  # the grader's 0/1 share
    assert step["reward/positive_frac"] == 1.0  # brevity > 0 makes every total positive
    # a BPE tokenizer next to a Llama model is saved as it is: no ngrpo pin (a plain
    # AutoTokenizer already reads it unchanged)
    checkpoint = run_dir / "checkpoints" / "step-000001"
    assert "auto_map" not in json.loads((checkpoint / "tokenizer_config.json").read_text())
    assert not (checkpoint / "tokenization_ngrpo.py").exists()
    text = "Ann has 12 pens and buys 3 more. How many pens?\n#### 15"
    assert AutoTokenizer.from_pretrained(str(checkpoint))(text)["input_ids"] == (
        load_tokenizer(checkpoint)(text)["input_ids"])  # fmt: skip
    assert main(["train", "--resume", str(run_dir), "train.steps=2"]) == 0
    err = capsys.readouterr().err
    assert _squash(f"resumed from step 1 ({checkpoint})") in _squash(err)


def test_the_example_config_is_complete_but_for_its_two_paths():
    with pytest.raises(NgrpoError, match="required settings not set: model.path, data.train"):
        load_config(EXAMPLE / "config.yaml")


def test_the_readme_walks_through_the_example_script():
    script = (EXAMPLE / "five_minutes.sh").read_text()
    guide = (Path(__file__).parents[1] / "docs" / "guides" / "own-model.md").read_text()
    for command in ("make_model.py", "make_data.py", "ngrpo plan", "ngrpo train --resume",
                    "ngrpo export", "ngrpo eval"):  # fmt: skip
        assert command.split()[-1] in script and command in guide
    ci = (Path(__file__).parents[1] / ".ci" / "run").read_text()
    assert "examples/own_model/five_minutes.sh" in ci
