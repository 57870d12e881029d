"""DAPO dynamic sampling: the group filter, merging rounds of rollouts into one batch (replay still
exact), merged metrics, the trainer's rounds / drops / cap, and exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from factories import tiny_lm
from transformers import Qwen2ForCausalLM

import ngrpo.rewards
from ngrpo.config import load_config
from ngrpo.learner.update import sequence_logprobs
from ngrpo.method.exploration import ExplorationConfig
from ngrpo.rollout import SamplingParams, generate
from ngrpo.rollout.batch import concat_batches
from ngrpo.tracking.completions import read_completions
from ngrpo.trainer import load_run_config, read_metrics, train
from ngrpo.trainer.dynamic_sampling import (
    cat_batches,
    learner_slots,
    merge_stats,
    renumbered,
    varied_groups,
)

PAD, EOS, MARKER = 0, [1], [4]


def test_varied_groups_drops_exactly_the_all_equal_groups():
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.25]])
    assert varied_groups(rewards).tolist() == [False, False, True, True]


def test_learner_slots_split_every_mini_batch_and_the_last_partial_one():
    # 6 groups, mini-batches of 4 over 2 processes: [0 1 | 2 3] then the partial [4 | 5]
    assert learner_slots(6, 4, 2, 0) == [0, 1, 4] and learner_slots(6, 4, 2, 1) == [2, 3, 5]
    # 5 groups: the partial mini-batch's one group cannot be split evenly: left out
    assert learner_slots(5, 4, 2, 0) == [0, 1] and learner_slots(5, 4, 2, 1) == [2, 3]
    assert learner_slots(4, 2, 1, 0) == [0, 1, 2, 3]  # one process: everything, in order
    assert learner_slots(1, 2, 2, 0) == []  # fewer groups than processes: the caller decides


def _tiny() -> Qwen2ForCausalLM:
    return tiny_lm(60, shape="micro", max_positions=64)


@pytest.mark.parametrize("strategy", ["neighbor", "gaussian"])
def test_merged_rounds_keep_every_row_and_replay_exactly(strategy):
    model = _tiny()
    explore = ExplorationConfig(strategy=strategy, mix_top_k=2, mix_rate=0.5)
    a = generate(
        model, [[10, 11, 12, 13, 14], [20, 21]], SamplingParams(n=2, max_new_tokens=6),
        eos_token_id=EOS, pad_token_id=PAD, exploration=explore, answer_start_ids=MARKER,
        training=True, seed=0,
    )  # fmt: skip
    b = generate(
        model, [[30]], SamplingParams(n=2, max_new_tokens=11), eos_token_id=[],
        pad_token_id=PAD, exploration=explore, answer_start_ids=MARKER, training=True, seed=1,
    )  # fmt: skip
    merged = renumbered(concat_batches([a.select(torch.tensor([2, 3])), b], PAD))
    with pytest.warns(DeprecationWarning, match="concat_batches"):  # the old name still works
        old = cat_batches([a.select(torch.tensor([2, 3])), b], PAD)
    assert torch.equal(old.soft_inputs.weights, merged.soft_inputs.weights)
    assert torch.equal(old.prompt_index, merged.prompt_index)
    assert merged.prompt_ids.shape == (4, 5) and merged.response_ids.shape == (4, 11)
    assert merged.prompt_index.tolist() == [0, 0, 1, 1]
    # rows keep their tokens (prompts left-padded, responses right-padded)
    assert merged.prompt_ids[0, -2:].tolist() == [20, 21] and merged.prompt_mask[0].sum() == 2
    assert merged.prompt_ids[2].tolist() == [PAD] * 4 + [30]
    t = a.response_ids.shape[1]
    assert torch.equal(merged.response_ids[:2, :t], a.response_ids[2:])
    assert torch.equal(merged.logprobs[2:], b.logprobs)
    assert merged.mixed[:2, t:].sum() == 0 and merged.response_mask[:2, t:].sum() == 0
    with torch.no_grad():
        logp, _ = sequence_logprobs(model, merged, 1.0)
    assert (logp - merged.logprobs)[merged.response_mask.bool()].abs().max() <= 1e-4


def test_merge_stats_hand_example():
    s1 = {"rollout/tokens": 10.0, "rollout/mixed_tokens": 2.0, "rollout/mixed_frac": 0.5,
          "rollout/embed_shift": 0.1, "rollout/truncated_frac": 0.0, "rollout/seconds": 1.0,
          "rollout/response_len": 5.0, "rollout/tokens_per_s": 10.0}  # fmt: skip
    s2 = {"rollout/tokens": 30.0, "rollout/mixed_tokens": 6.0, "rollout/mixed_frac": 0.25,
          "rollout/embed_shift": 0.3, "rollout/truncated_frac": 0.5, "rollout/seconds": 3.0,
          "rollout/response_len": 15.0, "rollout/tokens_per_s": 10.0}  # fmt: skip
    m = merge_stats([s1, s2], [2, 2])
    assert m["rollout/tokens"] == 40.0 and m["rollout/mixed_tokens"] == 8.0
    assert m["rollout/mixed_frac"] == pytest.approx(8 / (4 + 24))  # eligible 4 and 24
    assert m["rollout/embed_shift"] == pytest.approx((0.1 * 2 + 0.3 * 6) / 8)
    assert m["rollout/truncated_frac"] == pytest.approx(0.25)
    assert m["rollout/response_len"] == 10.0 and m["rollout/tokens_per_s"] == 10.0


# --------------------------------------------------------------------------- the trainer


def _overrides(base: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [
        f"model.path={base}", f"output_dir={out}", f"train.steps={steps}",
        "train.prompts_per_step=2", "train.mini_batch_prompts=1", "rollout.num_generations=2",
        "rollout.max_completion_length=12", "eval.every=0", "eval.at_start=false",
        "logging.save_every=1", "logging.keep_last=5", "exploration.mix_rate=0.3",
        "train.entropy_coef=0.01", "train.dynamic_sampling=true", *extra,
    ]  # fmt: skip


def _scripted_rewards(monkeypatch, script: list[list[float]]) -> list[int]:
    """Replace the reward with a script: call i returns script[i] (then the last entry)."""
    calls = []

    def fake(texts, golds, kind="math", pool=None):
        calls.append(len(texts))
        return [float(r) for r in script[min(len(calls) - 1, len(script) - 1)]]

    # the built-in grader is reached through the run's reward set (ngrpo.rewards.functions)
    monkeypatch.setattr(ngrpo.rewards.functions, "batch_rewards", fake)
    return calls


def test_dynamic_sampling_drops_equal_groups_draws_more_and_respects_the_cap(
    base_model_dir, tmp_path, monkeypatch
):
    # round 1: both groups all-equal; round 2: group 0 varies; round 3: both vary (one is excess)
    calls = _scripted_rewards(monkeypatch, [[1, 1, 0, 0], [1, 0, 1, 1], [0, 1, 1, 0]])
    out = train(load_config("tiny_ngrpo", _overrides(
        base_model_dir, tmp_path / "a", 1, "train.max_sampling_rounds=5")))  # fmt: skip
    (row,) = [r for r in read_metrics(out) if r.get("step") == 1]
    assert calls == [4, 4, 4]
    assert row["rollout/dynamic_sampling_rounds"] == 3.0
    assert row["rollout/groups_dropped"] == 3.0 and row["rollout/groups_kept"] == 2.0
    assert row["reward/mean"] == 0.5  # the kept groups: [1, 0] and [0, 1]
    # the completion file holds the kept rows with each reward function's value (rounds 2, 3)
    written = read_completions(out / "completions" / "step-000001.jsonl")
    assert [r["rewards"] for r in written] == [{"math": v} for v in (1.0, 0.0, 0.0, 1.0)]
    assert [r["reward"] for r in written] == [1.0, 0.0, 0.0, 1.0]
    # the cap: nothing ever varies; 2 rounds, then the step trains on the last round as drawn
    calls = _scripted_rewards(monkeypatch, [[1, 1, 1, 1]])
    out = train(load_config("tiny_ngrpo", _overrides(
        base_model_dir, tmp_path / "b", 1, "train.max_sampling_rounds=2")))  # fmt: skip
    (row,) = [r for r in read_metrics(out) if r.get("step") == 1]
    assert calls == [4, 4]
    assert row["rollout/dynamic_sampling_rounds"] == 2.0 and row["rollout/groups_dropped"] == 4.0
    assert row["rollout/groups_kept"] == 0.0 and row["train/optimizer_steps"] == 2.0
    state = torch.load(out / "checkpoints/step-000001/trainer_state.pt", weights_only=False)
    assert state["sampler"] == {"epoch": 0, "position": 4}  # 2 rounds x 2 prompts drawn


def test_resume_with_dynamic_sampling_equals_the_straight_run(base_model_dir, tmp_path):
    straight = train(load_config("tiny_ngrpo", _overrides(base_model_dir, tmp_path / "s", 4)))
    split = tmp_path / "split"
    train(load_config("tiny_ngrpo", _overrides(base_model_dir, split, 2)))
    train(load_run_config(split, ["train.steps=4"]), resume=True)

    def untimed(rows):
        return [{k: v for k, v in r.items()
                 if not k.startswith(("time/", "rollout/seconds", "memory/"))
                 and "tokens_per_s" not in k}
                for r in rows]  # fmt: skip

    ref, got = read_metrics(straight), read_metrics(split)
    assert untimed(got) == untimed(ref)
    assert any(r["rollout/dynamic_sampling_rounds"] > 1 for r in ref)  # extra draws happened
