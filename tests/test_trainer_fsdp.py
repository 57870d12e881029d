"""Two-process FSDP2 training on CPU (torchrun, gloo): the final weights and metrics equal a
1-process run of the same global batch, the replay invariant holds, the rollout copy follows the
updates (both checked inside by tests/fsdp_train_check.py), activation checkpointing works under
FSDP, and checkpoints resume exactly: FSDP → FSDP, FSDP → 1 process, 1 process → FSDP; a kill
inside an FSDP save resumes from the previous complete checkpoint."""

from __future__ import annotations

import subprocess

import pytest
from launch import cut_after, max_diff, run_ngrpo, weights_at

from ngrpo.trainer import checkpoint_dirs, read_metrics

# Two optimizer steps per training step: each process's k-th mini-batch is its half of the
# global k-th one. generation_batch_size = one prompt's group, so both world sizes generate the
# same batches with the same seeds.
COMMON = [
    "--config", "tiny_ngrpo", "train.prompts_per_step=4", "train.mini_batch_prompts=2",
    "rollout.num_generations=4", "rollout.max_completion_length=40",
    "rollout.generation_batch_size=4", "train.micro_batch_size=2", "train.entropy_coef=0.01",
    "eval.at_start=false", "eval.every=0", "logging.save_every=1", "logging.keep_last=3",
    "train.beta=0.05",  # a KL reference: sharded under FSDP, its log-probs enter the gradient
]  # fmt: skip
CHECK = "fsdp_train_check.py"


def _run(args: list[str], processes: int, **env: str) -> subprocess.CompletedProcess:
    return run_ngrpo(args, processes, CHECK, **env)


@pytest.fixture(scope="module")
def runs(base_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    model = f"model.path={base_model_dir}"
    single = root / "single"  # 3 straight steps, one process, a checkpoint after each
    _run(["train", *COMMON, model, "train.steps=3", f"output_dir={single}"], 1)
    sharded = root / "fsdp"  # 2 steps, FSDP over 2 processes, activation checkpointing on
    _run(["train", *COMMON, model, "train.steps=2", f"output_dir={sharded}",
          "train.strategy=fsdp", "model.gradient_checkpointing=true"], 2)  # fmt: skip
    return root, single, sharded


@pytest.mark.numerics
def test_fsdp_equals_one_process(runs):
    """Same global batch: weights within 1e-5 (fp32), reward exactly, losses within 1e-5."""
    _, single, sharded = runs
    assert max_diff(weights_at(sharded, 2), weights_at(single, 2)) < 1e-5
    assert max_diff(weights_at(sharded, 2), weights_at(single, 1)) > 1e-5  # training moved them
    one = [r for r in read_metrics(single) if r["type"] == "train"][:2]
    two = [r for r in read_metrics(sharded) if r["type"] == "train"]
    assert [r["train/world_size"] for r in two] == [2.0, 2.0]
    for a, b in zip(one, two, strict=True):
        assert a["reward/mean"] == b["reward/mean"]
        assert a["rollout/tokens"] == b["rollout/tokens"]
        for key in ("loss/pg", "loss/kl", "loss/total", "actor/entropy", "actor/grad_norm"):
            assert abs(a[key] - b[key]) < 1e-5, key
        assert b["actor/replay_logp_err"] <= 1e-4
    assert two[1]["loss/kl"] > 1e-7  # the policy left the reference: the KL term is live
    names = sorted(p.name for p in (sharded / "checkpoints" / "step-000002").iterdir())
    assert "optimizer" in names and "model.safetensors" in names and "trainer_state.pt" in names


@pytest.mark.numerics
def test_fsdp_resume_and_cross_loading(runs):
    """Step 3 resumed from a step-2 checkpoint equals 3 straight steps (1 process), whichever
    strategy wrote the checkpoint and whichever resumes it."""
    root, single, sharded = runs
    straight = weights_at(single, 3)
    # FSDP checkpoint resumed by FSDP
    again = cut_after(sharded, root / "fsdp_fsdp", 2)
    _run(["train", "--resume", str(again), "train.steps=3"], 2)
    # FSDP checkpoint resumed in one process
    alone = cut_after(sharded, root / "fsdp_single", 2)
    _run(["train", "--resume", str(alone), "train.steps=3", "train.strategy=ddp"], 1)
    # 1-process checkpoint resumed by FSDP
    spread = cut_after(single, root / "single_fsdp", 2)
    _run(["train", "--resume", str(spread), "train.steps=3", "train.strategy=fsdp"], 2)
    for run_dir in (again, alone, spread):
        assert max_diff(weights_at(run_dir, 3), straight) < 1e-5, run_dir.name
        rows = [r for r in read_metrics(run_dir) if r["type"] == "train"]
        assert [r["step"] for r in rows] == [1, 2, 3]


def test_fsdp_recomputed_old_logprobs_give_ratios_of_exactly_one(base_model_dir, tmp_path):
    # π_old by the sharded policy's own forward (no gradients, the update's micro-batches, root
    # resharded after); one mini-batch, so every ratio is taken before any optimizer step. The
    # evaluation after the step: each process decodes one of the two problems on its rollout copy.
    run_dir = tmp_path / "recompute"
    _run(["train", *COMMON, f"model.path={base_model_dir}", "train.steps=1",
          "train.mini_batch_prompts=4", "train.old_logprobs=recompute", "train.strategy=fsdp",
          f"output_dir={run_dir}", "data.eval_sets=arith-id", "eval.every=1", "eval.limit=2",
          "eval.n=1", "eval.batch_size=1", "eval.max_new_tokens=8"], 2)  # fmt: skip
    (evaluated,) = [r for r in read_metrics(run_dir) if r["type"] == "eval"]
    assert evaluated["step"] == 1 and 0.0 <= evaluated["eval/arith-id/mean@n"] <= 1.0
    row = [r for r in read_metrics(run_dir) if r["type"] == "train"][0]
    assert row["train/world_size"] == 2.0
    assert row["actor/ratio_min"] == 1.0 and row["actor/ratio_max"] == 1.0
    assert row["time/old_logprobs_s"] > 0
    assert row["mismatch/logp_abs_max"] < 1e-4  # fp32: the rollout's log-probs agree (replay)


def test_a_kill_inside_an_fsdp_save_resumes_from_the_previous_checkpoint(runs, base_model_dir):
    """Both processes killed (SIGKILL) inside step 2's save, their optimizer shards in the
    staging directory: step 1's checkpoint is the newest complete one; `--resume` removes the
    staging directory, redoes step 2 and ends with the weights of 2 straight steps."""
    root, single, _ = runs
    killed = root / "killed"
    args = ["train", *COMMON, f"model.path={base_model_dir}", "train.steps=2",
            f"output_dir={killed}", "train.strategy=fsdp"]  # fmt: skip
    done = _run(args, 2, KILL_IN_SAVE="2")
    assert done.returncode != 0 and "SIGKILL" in done.stderr, done.stderr[-3000:]
    assert [p.name for p in checkpoint_dirs(killed)] == ["step-000001"]
    (staging,) = (killed / "checkpoints").glob(".tmp-step-000002-optimizer-*")
    assert any(staging.iterdir())  # the shards were written; the checkpoint never got in place

    _run(["train", "--resume", str(killed)], 2)
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == [
        "step-000001", "step-000002",
    ]  # fmt: skip
    assert max_diff(weights_at(killed, 2), weights_at(single, 2)) < 1e-5
    assert [r["step"] for r in read_metrics(killed) if r["type"] == "train"] == [1, 2]
