"""Stopping `ngrpo train` on a signal (real subprocesses): at the next safe point of the step in
progress (the rollout, reference scoring or the update before its first optimizer step drop the
step and save the state at its start), or at the step's end once it has changed the weights; a
second signal leaves at once. tests/slow_phase_check.py holds one phase of one step long enough to
signal the run inside it. The two-process stop is in test_trainer_ddp.py."""

from __future__ import annotations

import argparse
import gc
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_trainer import _overrides, _untimed, _weights

import ngrpo.cli
from ngrpo.cli import main
from ngrpo.trainer import checkpoint_dirs, read_metrics, train
from ngrpo.trainer.stop import DUPLICATE_S
from ngrpo.utils.errors import STOPPED_EXIT_CODE, TrainingStopped

SCRIPT = Path(__file__).with_name("slow_phase_check.py")
STEPS = 3


@pytest.fixture(scope="module")
def straight(base_model_dir, tmp_path_factory) -> Path:
    """Three steps in one go (what a stopped and resumed run must equal)."""
    from ngrpo.config import load_config

    out = tmp_path_factory.mktemp("straight")
    return train(load_config("tiny_ngrpo", _overrides(base_model_dir, out, STEPS)))


def _start_slowed(base: Path, out: Path, phase: str, call: int, seconds: float, *extra: str):
    """`ngrpo train` of STEPS steps (own process group) whose `call`-th call of `phase` first
    touches the returned marker, then sleeps `seconds`."""
    marker = out.parent / f"{out.name}.slow"
    env = {
        **os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "SLOW_PHASE": phase,
        "SLOW_CALL": str(call), "SLOW_S": str(seconds), "SLOW_MARKER": str(marker),
    }  # fmt: skip
    overrides = _overrides(base, out, STEPS, *extra)
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "train", "--config", "tiny_ngrpo", *overrides],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while not marker.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the slowed phase was not reached"
        time.sleep(0.05)
    return process


def _resumed_equals_straight(out: Path, straight: Path) -> None:
    assert main(["train", "--resume", str(out)]) == 0
    ref, got = (_weights(straight / f"checkpoints/step-{STEPS:06d}"),
                _weights(out / f"checkpoints/step-{STEPS:06d}"))  # fmt: skip
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    assert _untimed(read_metrics(out)) == _untimed(read_metrics(straight))


@pytest.mark.parametrize(
    ("phase", "call", "signum", "step", "words"),
    [
        ("rollout", 1, signal.SIGTERM, 1, "the rollout"),  # nothing saved yet: starts over
        ("learner", 3, signal.SIGUSR1, 2, "the update, before its first optimizer step"),
    ],
)  # fmt: skip
def test_a_stop_inside_a_step_drops_it_at_once_and_resume_is_exact(
    straight, base_model_dir, tmp_path, phase, call, signum, step, words
):
    """A signal while step `step` is in `phase` (held there for 120 s): exit 75 within seconds,
    not after the phase; the step is dropped (no metrics line, no checkpoint of it), the
    checkpoint is the previous step's (save_every is 0: the stop wrote it) and the `stopped:` line
    says where and how long it took; `--resume` then equals an uninterrupted run bit for bit."""
    out = tmp_path / "run"
    process = _start_slowed(base_model_dir, out, phase, call, 120, "logging.save_every=0")
    signalled = time.monotonic()
    process.send_signal(signum)
    stderr = process.communicate(timeout=120)[1]
    assert time.monotonic() - signalled < 30, "the stop waited for the slowed phase"
    assert process.returncode == STOPPED_EXIT_CODE, stderr[-3000:]
    name = signal.Signals(signum).name
    assert f"{name} received: stopping at the next safe point" in stderr
    last = stderr.strip().splitlines()[-1]
    took = re.search(rf"\({name}, ([0-9.]+) s after it\)", last)
    assert took and float(took.group(1)) < 30, last
    assert last.startswith(f"stopped: during step {step} of {STEPS}, in {words} ("), last
    logged = read_metrics(out) if (out / "metrics.jsonl").exists() else []
    assert [r["step"] for r in logged] == list(range(1, step))
    if step == 1:
        assert checkpoint_dirs(out) == [] and "nothing to save" in last
    else:
        assert [p.name for p in checkpoint_dirs(out)] == [f"step-{step - 1:06d}"]
        assert f"(step {step} was dropped: `ngrpo train --resume {out}` redoes it)" in last
    _resumed_equals_straight(out, straight)


EVALUATED = ("eval.every=1", "data.eval_sets=arith-id", "eval.limit=2", "eval.n=2",
             "eval.max_new_tokens=16", "logging.save_every=0")  # fmt: skip


@pytest.mark.parametrize("step", [2, STEPS])  # an evaluation between steps, and the last one
def test_a_stop_during_an_evaluation_cuts_it_and_resume_runs_it_first(
    base_model_dir, tmp_path, step
):
    """SIGTERM while the evaluation after step `step` runs (held 120 s): exit 75 within seconds
    with that step's checkpoint and no metrics line of the cut evaluation; `--resume` runs the
    evaluation first and the run then equals an uninterrupted one bit for bit."""
    from ngrpo.config import load_config

    straight = train(load_config("tiny_ngrpo", _overrides(base_model_dir, tmp_path / "straight",
                                                          STEPS, *EVALUATED)))  # fmt: skip
    out = tmp_path / "run"
    process = _start_slowed(base_model_dir, out, "evaluation", step, 120, *EVALUATED)
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=120)[1]
    assert time.monotonic() - signalled < 30, "the stop waited for the evaluation"
    assert process.returncode == STOPPED_EXIT_CODE, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"stopped: after step {step} of {STEPS} (SIGTERM, "), last
    assert f"(step {step}'s evaluation was cut short: `ngrpo train --resume {out}` runs it " in last
    assert [p.name for p in checkpoint_dirs(out)] == [f"step-{step:06d}"]
    rows = [(r["step"], r["type"]) for r in read_metrics(out)]
    assert rows[-1] == (step, "train") and (step, "eval") not in rows
    _resumed_equals_straight(out, straight)


SLOW_REWARD = """
import pathlib
import time

CALLS = 0


def slow_after_first(completions, **kwargs):
    global CALLS
    CALLS += 1
    if CALLS > 1:  # the second step's rewards take 120 s: a signal arrives inside them
        pathlib.Path(__file__).with_suffix(".started").touch()
        time.sleep(120)
    return [float(i % 2) for i in range(len(completions))]
"""


def test_a_stop_while_a_reward_function_runs_drops_the_step(base_model_dir, tmp_path):
    """SIGUSR1 (Slurm's early warning) while step 2's user reward function runs in its worker
    (120 s): exit 75 within seconds, step 1's checkpoint, `stopped: during step 2 ..., in the
    rewards`."""
    reward = tmp_path / "slow_reward.py"
    reward.write_text(SLOW_REWARD)
    out = tmp_path / "run"
    overrides = _overrides(base_model_dir, out, STEPS, f"train.reward={reward}:slow_after_first",
                           "train.reward_timeout_s=600", "logging.save_every=0")  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "ngrpo", "train", "--config", "tiny_ngrpo", *overrides],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    while not reward.with_suffix(".started").exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.05)
    signalled = time.monotonic()
    process.send_signal(signal.SIGUSR1)
    stderr = process.communicate(timeout=120)[1]
    assert time.monotonic() - signalled < 30, "the stop waited for the reward function"
    assert process.returncode == STOPPED_EXIT_CODE, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"stopped: during step 2 of {STEPS}, in the rewards (SIGUSR1, "), last
    assert [p.name for p in checkpoint_dirs(out)] == ["step-000001"]
    assert [r["step"] for r in read_metrics(out)] == [1]


def test_a_stop_after_the_first_optimizer_step_finishes_the_step(base_model_dir, tmp_path):
    """SIGTERM during step 2's second mini-batch (after its first optimizer step, held 3 s): the
    step runs to its end, its checkpoint is written, one `stopped: after step 2` line, exit 75.
    (Resuming from a step's own checkpoint is test_trainer.py's 2 + 2 = 4 steps.)"""
    out = tmp_path / "run"
    process = _start_slowed(base_model_dir, out, "learner", 4, 3, "logging.save_every=0")
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == STOPPED_EXIT_CODE, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert re.match(rf"stopped: after step 2 of {STEPS} \(SIGTERM, [0-9.]+ s after it\); "
                    r"checkpoint \S+step-000002 is complete: ", last), last  # fmt: skip
    assert f"`ngrpo train --resume {out}` continues" in last and "error:" not in stderr
    assert [p.name for p in checkpoint_dirs(out)] == ["step-000002"]
    assert [r["step"] for r in read_metrics(out)] == [1, 2]


def test_a_second_signal_exits_at_once_keeping_the_previous_checkpoint(base_model_dir, tmp_path):
    """SIGINT after step 2's first optimizer step (held 30 s there), then SIGINT again 1.5 s
    later: exit 130 within seconds, no checkpoint of step 2, step 1's complete and loadable."""
    from ngrpo.models.load import load_model

    out = tmp_path / "twice"
    process = _start_slowed(base_model_dir, out, "learner", 4, 30)
    process.send_signal(signal.SIGINT)
    time.sleep(DUPLICATE_S + 0.5)  # later than a launcher's duplicate of the first signal
    process.send_signal(signal.SIGINT)
    second = time.monotonic()
    stderr = process.communicate(timeout=60)[1]
    assert time.monotonic() - second < 15, "the step's 30 s mini-batch was waited for"
    assert process.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "interrupted"
    assert "SIGINT received: stopping at the next safe point" in stderr
    assert [p.name for p in checkpoint_dirs(out)] == ["step-000001"]
    load_model(out / "checkpoints/step-000001")
    assert [r["step"] for r in read_metrics(out)] == [1]


def test_a_stopped_run_skips_the_final_garbage_collection(monkeypatch, capsys):
    """After `stopped:` (and `interrupted`) the CLI freezes the heap at exit: the interpreter's
    final collection took 4-6 s of a scheduler's grace period (docs/stopping.md)."""
    registered = []
    monkeypatch.setattr(ngrpo.cli.atexit, "register", registered.append)

    def stopped(args):
        raise TrainingStopped("after step 1 of 2 (SIGTERM, 0.1 s after it); ...")

    parser = argparse.ArgumentParser()
    parser.add_argument("--log-level", default="warning")
    parser.set_defaults(func=stopped)
    monkeypatch.setattr(ngrpo.cli, "build_parser", lambda: parser)
    assert ngrpo.cli.main([]) == STOPPED_EXIT_CODE
    assert capsys.readouterr().err.startswith("stopped: after step 1 of 2")
    assert registered == [gc.freeze]
