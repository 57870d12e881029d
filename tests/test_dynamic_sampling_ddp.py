"""DAPO dynamic sampling on two processes (torchrun, gloo, `train.strategy: ddp`): the same
groups kept, the same weights as one process, and exact resume."""

from __future__ import annotations

import pytest
from launch import cut_after, max_diff, run_ngrpo, weights_at

from ngrpo.tracking.completions import read_completions
from ngrpo.trainer import read_metrics

# One prompt's group per generation batch: both world sizes generate the same batches with the
# same seeds. Two mini-batches of 2 prompts: each process learns from its half of each.
COMMON = [
    "--config", "tiny_ngrpo", "train.prompts_per_step=4", "train.mini_batch_prompts=2",
    "rollout.num_generations=4", "rollout.max_completion_length=24",
    "rollout.generation_batch_size=4", "train.micro_batch_size=2", "train.dynamic_sampling=true",
    "train.max_sampling_rounds=6", "eval.at_start=false", "eval.every=0", "logging.save_every=1",
    "logging.keep_last=3",
]  # fmt: skip


def _run(args: list[str], processes: int) -> None:
    run_ngrpo(args, processes, "ddp_train_check.py", timeout=400)


@pytest.mark.numerics
def test_two_processes_keep_the_groups_of_one_and_resume_exactly(base_model_dir, tmp_path):
    model = f"model.path={base_model_dir}"
    single, double = tmp_path / "single", tmp_path / "double"
    _run(["train", *COMMON, model, "train.steps=2", f"output_dir={single}"], 1)
    _run(["train", *COMMON, model, "train.steps=2", f"output_dir={double}"], 2)
    one = [r for r in read_metrics(single) if r["type"] == "train"]
    two = [r for r in read_metrics(double) if r["type"] == "train"]
    assert [r["train/world_size"] for r in two] == [2.0, 2.0]
    # the filter dropped groups, and every step reached its 4 groups (4-5 rounds): a step at the
    # round cap with a group count the processes cannot split evenly would differ (learner_slots)
    assert all(r["rollout/groups_dropped"] > 0 and r["rollout/groups_kept"] == 4 for r in one)
    for a, b in zip(one, two, strict=True):
        for key in ("rollout/dynamic_sampling_rounds", "rollout/groups_dropped",
                    "rollout/groups_kept", "rollout/tokens", "reward/mean"):  # fmt: skip
            assert a[key] == b[key], key
        assert abs(a["loss/pg"] - b["loss/pg"]) < 1e-5

    # the completion files hold the same rows with the same per-function rewards
    def completions(run):
        rows = read_completions(run / "completions" / "step-000002.jsonl")
        return sorted((r["prompt"], r["response"], r["reward"], r["rewards"]["math"]) for r in rows)

    assert completions(double) == completions(single) and len(completions(single)) == 16
    # same math, another summation order (the gradient all-reduce): the FSDP test's bound
    assert max_diff(weights_at(double, 2), weights_at(single, 2)) < 1e-5
    assert max_diff(weights_at(double, 2), weights_at(double, 1)) > 1e-5  # training moved them
    # resume from the step-1 checkpoint: step 2 again, as the straight run
    again = cut_after(double, tmp_path / "again", 1)
    _run(["train", "--resume", str(again), "train.steps=2"], 2)
    assert max_diff(weights_at(again, 2), weights_at(double, 2)) == 0.0
    rows = [r for r in read_metrics(again) if r["type"] == "train"]
    assert [r["step"] for r in rows] == [1, 2]
