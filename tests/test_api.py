"""The Python API and the shipped example task, trained end to end on a tiny random model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from factories import tiny_qwen2

import ngrpo
from ngrpo import NgrpoError, TrainConfig, evaluate, read_metrics, train
from ngrpo.data import load_benchmark

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "keyword"
FAST = [
    "rollout.max_completion_length=8", "train.prompts_per_step=4", "train.mini_batch_prompts=4",
    "train.micro_batch_size=32", "logging.save_every=0",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_model_dir(embedded_tokenizer, tmp_path_factory) -> Path:
    from ngrpo.models.tokenizer import save_tokenizer

    directory = tmp_path_factory.mktemp("tiny")
    tiny_qwen2(embedded_tokenizer).save_pretrained(str(directory))
    save_tokenizer(embedded_tokenizer, directory)
    return directory


def short_answer(completions, **kwargs) -> list[float]:
    """A top-level reward function passed from Python (it runs in a worker process); the
    example's prompts are chat messages, so completions are TRL's conversational lists."""
    return [1.0 if len(c[-1]["content"].split()) <= 4 else 0.0 for c in completions]


def test_public_names():
    for name in ngrpo.__all__:
        assert getattr(ngrpo, name) is not None
    assert "train" in dir(ngrpo)
    with pytest.raises(AttributeError):
        ngrpo.no_such_name  # noqa: B018


def test_example_data_has_chat_prompts_and_reward_columns():
    examples = load_benchmark(EXAMPLE / "train.jsonl", require_answer=False).examples
    assert len(examples) == 200
    first = examples[0]
    assert [m["role"] for m in first.prompt] == ["system", "user"]
    assert first.problem == first.prompt[-1]["content"] and first.answer == ""
    assert set(first.columns) == {"id", "keyword", "max_words"}
    assert first.columns["keyword"] in first.problem.split()
    with pytest.raises(NgrpoError, match="train.jsonl:1: no answer"):
        load_benchmark(EXAMPLE / "train.jsonl")  # a built-in grader would need one


def test_the_example_task_trains_and_its_reward_rises(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the example config names its files relative to the repository
    run_dir = train(
        EXAMPLE / "config.yaml",
        overrides=[f"model.path={tiny_model_dir}", f"output_dir={tmp_path / 'run'}",
                   "train.steps=10", "train.learning_rate=3e-2", *FAST],
    )  # fmt: skip
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, 11))
    for row in rows:
        expected = row["reward/uses_keyword"] + 0.5 * row["reward/within_budget"]
        assert row["reward/mean"] == pytest.approx(expected)
    first = sum(r["reward/mean"] for r in rows[:3]) / 3
    last = sum(r["reward/mean"] for r in rows[-3:]) / 3
    assert last > first + 0.05, [round(r["reward/mean"], 3) for r in rows]
    assert rows[-1]["rollout/response_len"] < rows[0]["rollout/response_len"]
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert [r["fn"] for r in saved["train"]["rewards"]] == [
        "examples/keyword/rewards.py:uses_keyword", "examples/keyword/rewards.py:within_budget",
    ]  # fmt: skip


def test_train_with_python_reward_functions_and_evaluate(tiny_model_dir, tmp_path):
    cfg = TrainConfig()
    cfg.data.train = str(EXAMPLE / "train.jsonl")
    run_dir = train(
        cfg,
        overrides=[f"model.path={tiny_model_dir}", f"output_dir={tmp_path / 'run'}",
                   "train.steps=2", "eval.every=0", "eval.at_start=false", "data.eval_sets=[]",
                   "exploration.strategy=none", "train.beta=0", *FAST],
        reward_funcs=[short_answer, str(EXAMPLE / "rewards.py") + ":uses_keyword"],
        reward_weights=[0.5, 2.0],
    )  # fmt: skip
    rows = read_metrics(run_dir)
    for row in rows:
        expected = 0.5 * row["reward/short_answer"] + 2.0 * row["reward/uses_keyword"]
        assert row["reward/mean"] == pytest.approx(expected)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["rewards"]
    assert saved == [
        {"fn": "test_api:short_answer", "weight": 0.5},
        {"fn": f"{EXAMPLE / 'rewards.py'}:uses_keyword", "weight": 2.0},
    ]
    with pytest.raises(NgrpoError, match="2 reward functions but 1 reward_weights"):
        train(cfg, reward_funcs=[short_answer, "math"], reward_weights=[1.0])

    result = evaluate(run_dir / "checkpoints" / "step-000002", "arith-id", n=2, limit=3,
                      max_new_tokens=8)  # fmt: skip
    assert result.summary["num_problems"] == 3 and len(result.samples) == 6
    assert json.dumps(result.summary)  # plain data
