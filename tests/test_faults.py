"""Faults a long run meets, injected where they happen: out of memory in each phase of a step
(and `train.oom_retry`), a full disk or a read-only directory at a checkpoint. Each test checks
what a user gets: the one `error:` line, the exit code, and that no complete checkpoint was lost.
Stopping on signals is in test_trainer.py (1 process), test_trainer_ddp.py (2 processes) and
test_trainer_fsdp.py (a kill inside an FSDP save), the stop handler itself at the end here; a
reward function over its memory cap in test_reward_functions.py."""

from __future__ import annotations

import errno
import os
import re
import signal
from pathlib import Path

import pytest
import torch
from test_trainer import _assert_one_error_line, _cfg, _overrides, _weights

import ngrpo.evaluation
import ngrpo.learner.scored
import ngrpo.learner.update
import ngrpo.rollout
import ngrpo.utils.io
from ngrpo.cli import main
from ngrpo.config import load_config
from ngrpo.models.load import load_model
from ngrpo.trainer import checkpoint_dirs, load_trainer_state, read_metrics, train
from ngrpo.trainer.checkpoints import OOM_BUDGET
from ngrpo.trainer.setup import _check_world_size
from ngrpo.trainer.stop import DUPLICATE_S, GracefulStop, StepAbandoned
from ngrpo.utils.errors import Interrupted, NgrpoError
from ngrpo.utils.io import DiskError, write_atomically
from ngrpo.utils.oom import is_out_of_memory

CUDA_OOM = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79 GiB"
CPU_OOM = (
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
    "you tried to allocate 4000000000 bytes. Error code 12 (Cannot allocate memory)"
)  # what torch's CPU allocator raises: a plain RuntimeError


def _failing(real, at: int, error: BaseException, counted=lambda: True):
    """`real`, except that its `at`-th call (1-based) among those where `counted()` holds raises
    `error`."""
    calls: list[int] = []

    def wrapper(*args, **kwargs):
        if counted():
            calls.append(1)
            if len(calls) == at:
                raise error
        return real(*args, **kwargs)

    return wrapper


def _inject(phase: str, monkeypatch) -> None:
    """Make `phase` run out of memory in step 2, at its allocation point; the error types vary
    (CUDA's, the host's MemoryError, torch's CPU allocator). Per step: one generation batch, one
    reference micro-batch (no gradients), two learner micro-batches and two AdamW steps."""
    scores = ngrpo.learner.update.policy_scores
    if phase == "rollout":
        monkeypatch.setattr(ngrpo.rollout, "generate",
                            _failing(ngrpo.rollout.generate, 2, MemoryError()))  # fmt: skip
    elif phase == "reference":
        fail = _failing(scores, 2, RuntimeError(CPU_OOM), lambda: not torch.is_grad_enabled())
        monkeypatch.setattr(ngrpo.learner.scored, "policy_scores", fail)  # the no-grad passes
    elif phase == "learner":
        fail = _failing(scores, 3, torch.OutOfMemoryError(CUDA_OOM), torch.is_grad_enabled)
        monkeypatch.setattr(ngrpo.learner.update, "policy_scores", fail)
    elif phase == "optimizer":
        fail = _failing(torch.optim.AdamW.step, 3, torch.OutOfMemoryError(CUDA_OOM))
        monkeypatch.setattr(torch.optim.AdamW, "step", fail)
    else:  # the evaluation after step 2 (one per step)
        fail = _failing(ngrpo.evaluation.sample_examples, 2, MemoryError())
        monkeypatch.setattr(ngrpo.evaluation, "sample_examples", fail)


@pytest.mark.parametrize(
    ("phase", "shape", "remedy"),
    [
        ("rollout", r"generation batch 1 of 1: 4 rows × \(\d+ prompt \+ up to 16 new\) tokens",
         "rollout.generation_batch_size=2 (now null: all at once)"),
        ("reference", r"micro-batch 1 of 1: 4 rows × \(\d+ prompt \+ \d+ response\) tokens",
         "train.max_tokens_per_micro_batch="),
        ("learner", r"mini-batch 1 of 2, micro-batch 1 of 1: 2 rows × \(\d+ prompt \+ \d+ "
         r"response\) tokens; 2.00 GiB requested", "model.gradient_checkpointing=true"),
        ("optimizer", r"AdamW over [\d,]+ trainable parameters", "model.lora.r=16"),
        ("evaluation", r"1 sets, 1 samples per problem of up to 64 new tokens",
         "eval.batch_size=32 (now 64 rows), eval.n (now 1)"),
    ],
)  # fmt: skip
def test_out_of_memory_names_the_phase_shape_memory_and_settings(
    phase, shape, remedy, base_model_dir, tmp_path, monkeypatch, capsys
):
    """Out of memory in step 2 of each phase (in the evaluation after it): exit 2 with one
    `error:` line naming the phase, the batch's shape, the host's memory, `ngrpo plan`'s
    estimate and the settings that lower it; step 1's checkpoint stays complete and nothing of
    step 2 is written."""
    out = tmp_path / phase
    _inject(phase, monkeypatch)
    evaluation = ["eval.every=1", "eval.limit=2", "eval.n=1", "data.eval_sets=arith-id"]
    extra = evaluation if phase == "evaluation" else []  # (evaluation also calls `generate`)
    argv = ["train", "--config", "tiny_ngrpo", *_overrides(base_model_dir, out, 3, *extra)]
    assert main(argv) == 2
    stderr = capsys.readouterr().err
    when = "after step 2" if phase == "evaluation" else "at step 2"
    _assert_one_error_line(stderr, f"out of memory in the {phase} {when} (")
    line = stderr.strip().splitlines()[-1]
    assert re.search(shape, line), line
    assert re.search(r"host memory [\d.]+ GB, [\d.]+ GB available, this process's peak", line)
    plan_phase = {"reference": "learner", "optimizer": "step", "evaluation": "rollout"}.get(
        phase, phase
    )
    assert re.search(rf"`ngrpo plan` estimates [\d.]+ GB per process for its {plan_phase} phase",
                     line), line  # fmt: skip
    assert remedy in line and f"`ngrpo train --resume {out} KEY=VALUE`" in line
    assert [p.name for p in checkpoint_dirs(out)] == ["step-000001"]
    assert not any(p.name.startswith(".") for p in (out / "checkpoints").iterdir())
    load_model(out / "checkpoints/step-000001")
    trained = [r["step"] for r in read_metrics(out) if r["type"] == "train"]
    assert trained == ([1, 2] if phase == "evaluation" else [1])


def test_out_of_memory_errors_are_recognised():
    assert is_out_of_memory(torch.OutOfMemoryError(CUDA_OOM)) and is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError(CPU_OOM))
    assert not is_out_of_memory(RuntimeError("shape mismatch")) and not is_out_of_memory(OSError())
    with pytest.raises(RuntimeError, match="can't allocate memory"):  # the real CPU allocator
        torch.empty(2**62, dtype=torch.uint8)
    try:
        torch.empty(2**62, dtype=torch.uint8)
    except RuntimeError as err:
        assert is_out_of_memory(err)


def test_oom_retry_halves_the_budget_logs_it_and_keeps_it(
    base_model_dir, tmp_path, monkeypatch, caplog
):
    """A learner micro-batch of 2 rows runs out of memory whenever it is tried (injected):
    `train.oom_retry` halves the token budget (logged, counted in `train/oom_retries`, kept in
    the checkpoint) and the step goes on; its weights (two AdamW steps) equal, bitwise, a run
    that used one row per micro-batch from the start. That a retry redoes a mini-batch from
    its state before the attempt, after earlier optimizer steps and backward passes, is
    tested in test_learner.py (`test_an_out_of_memory_retry_redoes_the_mini_batch_...`)."""
    real = ngrpo.learner.update.policy_scores

    def scores(model, sub, *args, **kwargs):
        if torch.is_grad_enabled() and len(sub.prompt_ids) > 1:
            raise torch.OutOfMemoryError(CUDA_OOM)
        return real(model, sub, *args, **kwargs)

    monkeypatch.setattr(ngrpo.learner.update, "policy_scores", scores)
    # beta 0: no reference, whose log-probs would be batched differently by the two budgets
    retried = train(_cfg(base_model_dir, tmp_path / "retried", 1, "train.beta=0",
                         "train.oom_retry=true"))  # fmt: skip
    monkeypatch.undo()
    one_row = train(_cfg(base_model_dir, tmp_path / "one_row", 1, "train.beta=0",
                         "train.max_tokens_per_micro_batch=1"))  # fmt: skip

    got, ref = (_weights(run / "checkpoints/step-000001") for run in (retried, one_row))
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    (row,) = read_metrics(retried)
    assert row["train/oom_retries"] == 1.0 and read_metrics(one_row)[0]["train/oom_retries"] == 0
    assert re.search(r"out of memory in the learner at step 1 \(mini-batch 1 of 2, micro-batch 1 "
                     r"of 1: 2 rows .*\): train.oom_retry halves the token budget to \d+",
                     caplog.text)  # fmt: skip
    budget = load_trainer_state(retried / "checkpoints/step-000001/trainer_state.pt")[OOM_BUDGET]
    assert budget is not None and budget < 2 * 26  # less than two rows' prompts: rows go alone


def test_oom_retry_runs_in_a_single_process():
    """(Its value is validated with the other keys, test_config.py.)"""
    cfg = load_config("tiny_grpo", ["train.oom_retry=true", "train.prompts_per_step=2",
                                    "train.mini_batch_prompts=2"])  # fmt: skip
    _check_world_size(cfg, 1)
    with pytest.raises(NgrpoError, match="train.oom_retry runs in a single process"):
        _check_world_size(cfg, 2)


# ------------------------------------------------------------------------------------- disk


def test_a_full_disk_at_a_checkpoint_names_the_path_and_keeps_the_previous_one(
    base_model_dir, tmp_path, monkeypatch, capsys
):
    """ENOSPC while writing step 2's checkpoint (injected at the trainer-state write, the
    checkpoint's last file): exit 2, one `error:` line naming the path, step 1's checkpoint
    complete and no half-written directory left behind."""
    out = tmp_path / "full"
    calls, real = [], torch.save

    def save(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            Path(path).write_bytes(b"partial")  # the disk filled up mid-file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    assert main(["train", "--config", "tiny_ngrpo", *_overrides(base_model_dir, out, 3)]) == 2
    stderr = capsys.readouterr().err
    target = out / "checkpoints" / "step-000002"
    _assert_one_error_line(
        stderr, f"cannot write {target}: No space left on device (ENOSPC) at {calls[1]}; it was "
        "left as it was; step-000001 is the newest complete checkpoint: free space or make "
        f"{target.parent} writable, then `ngrpo train --resume {out}`",
    )  # fmt: skip
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000001"]
    load_model(out / "checkpoints/step-000001")


@pytest.fixture
def previous(tmp_path) -> Path:
    """A directory written before, which a failed write must leave as it was."""
    target = tmp_path / "target"
    write_atomically(target, lambda tmp: (tmp / "a.txt").write_text("old"))
    return target


TORCH_SHORT_WRITE = "[enforce fail at inline_container.cc:672] . unexpected pos 1900608 vs 1900496"
SAFETENSORS_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"


def _writing_fails(message: str):
    """A `write` that fails as torch.save / safetensors do when the disk fills up (messages as
    they were on a full tmpfs)."""

    def write(tmp: Path) -> None:
        (tmp / "a.txt").write_text("new")
        raise RuntimeError(message)

    return write


def _statvfs(free_blocks: int, read_only: bool):
    real = os.statvfs

    def statvfs(path):
        stat = real(path)
        fields = list(stat)
        fields[4] = free_blocks  # f_bavail
        fields[8] = stat.f_flag | (os.ST_RDONLY if read_only else 0)
        return os.statvfs_result(fields)

    return statvfs


@pytest.mark.parametrize(
    ("message", "free", "read_only", "reason"),
    [(TORCH_SHORT_WRITE, 0, False, r"no space left on the device \(0.0 MiB free; \[enforce"),
     (TORCH_SHORT_WRITE, 10**9, True, r"the file system is read-only \(RuntimeError: \[enforce"),
     (SAFETENSORS_FULL, 10**9, False, r"No space left on device \(ENOSPC\): Error while ser")],
)  # fmt: skip
def test_a_write_failing_for_lack_of_disk_is_a_disk_error(
    message, free, read_only, reason, previous, monkeypatch
):
    """torch and safetensors report a failed write in their own exception types: with the file
    system full or read-only, or an OS disk error quoted, it is a `DiskError`; the temporary
    directory is removed and the previous version stays."""
    monkeypatch.setattr(ngrpo.utils.io.os, "statvfs", _statvfs(free, read_only))
    with pytest.raises(DiskError, match=f"cannot write {previous}: {reason}"):
        write_atomically(previous, _writing_fails(message))
    assert sorted(p.name for p in previous.parent.iterdir()) == ["target"]
    assert (previous / "a.txt").read_text() == "old"


def test_another_failure_is_not_put_down_to_the_disk(previous):
    """With room on the disk a failed write keeps its own exception and its temporary
    directory (as a kill would; `--resume` removes it)."""
    with pytest.raises(RuntimeError, match="unexpected pos"):
        write_atomically(previous, _writing_fails(TORCH_SHORT_WRITE))
    assert (previous / "a.txt").read_text() == "old"
    assert any(p.name.startswith(".tmp-target-") for p in previous.parent.iterdir())


def test_a_read_only_directory_is_a_disk_error_injected(previous, monkeypatch):
    """EROFS when the temporary directory is made (what a read-only mount gives, also to root)."""
    real = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.name.startswith(".tmp-"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(DiskError, match=r"Read-only file system \(EROFS\) at .*\.tmp-target-"):
        write_atomically(previous, _writing_fails(SAFETENSORS_FULL))
    assert (previous / "a.txt").read_text() == "old"


_READ_ONLY_CHECK = """
import os
import sys
from pathlib import Path
from ngrpo.utils.io import DiskError, write_atomically
if os.geteuid() == 0:  # imports done as root; the writes as nobody, whom chmod does stop
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
target = Path(sys.argv[1]) / "target"
write_atomically(target, lambda tmp: (tmp / "a.txt").write_text("old"))
target.parent.chmod(0o555)
def write(tmp):
    (tmp / "a.txt").write_text("new")
try:
    write_atomically(target, write)
except DiskError as error:
    print("DiskError:", error)
finally:
    target.parent.chmod(0o755)
print("left:", sorted(p.name for p in target.parent.iterdir()), (target / "a.txt").read_text())
"""


def test_a_read_only_directory_is_a_disk_error(tmp_path):
    """chmod does not stop root's writes, so the check runs in a child process that, when
    started as root (CI), drops to the unprivileged user `nobody` (uid 65534) before writing in
    a directory that user owns."""
    import subprocess
    import sys
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="ngrpo-ro-"))
    try:
        if os.geteuid() == 0:
            os.chmod(work, 0o755)
            os.chown(work, 65534, 65534)
        done = subprocess.run(
            [sys.executable, "-c", _READ_ONLY_CHECK, str(work)], capture_output=True, text=True,
            timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, cwd=work,
        )  # fmt: skip
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"DiskError: .*Permission denied \(EACCES\)", done.stdout), done.stdout
    assert "left: ['target'] old" in done.stdout, done.stdout


def test_a_full_disk_at_the_metrics_log_is_an_error_naming_it(
    base_model_dir, tmp_path, monkeypatch, capsys
):
    out, real = tmp_path / "log", Path.open

    def open_(self, mode="r", *args, **kwargs):
        if self.name == "metrics.jsonl" and mode == "a":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_)
    assert main(["train", "--config", "tiny_ngrpo", *_overrides(base_model_dir, out, 1)]) == 2
    _assert_one_error_line(
        capsys.readouterr().err,
        f"cannot write {out / 'metrics.jsonl'}: No space left on device (ENOSPC)",
    )


# ------------------------------------------------------------------- the stop handler itself


def test_the_stop_handlers_are_put_back_and_a_late_second_signal_interrupts():
    """`GracefulStop` (what `train()` runs under) restores the handlers it found; a signal
    within `DUPLICATE_S` of the first is the same request, a later one raises `Interrupted`
    with the shell's code for that signal. (Real signals to `ngrpo train`: test_stop.py.)"""

    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    # what SIGINT had: Python's default_int_handler, or SIG_IGN when the test runs in a background
    # job of a non-interactive shell (`cmd &`, nohup)
    sigint_before = signal.getsignal(signal.SIGINT)
    try:
        with GracefulStop() as stop:
            assert signal.getsignal(signal.SIGTERM) == stop._handle
            assert signal.getsignal(signal.SIGINT) == stop._handle
            assert signal.getsignal(signal.SIGUSR1) == stop._handle  # Slurm's early warning
            stop._handle(signal.SIGTERM, None)
            stop._handle(signal.SIGINT, None)  # the same request, delivered twice
            assert stop.signal_name == "SIGTERM"
            stop.received_at -= DUPLICATE_S
            with pytest.raises(Interrupted) as interrupted:
                stop._handle(signal.SIGTERM, None)
            assert interrupted.value.exit_code == 143
            assert signal.getsignal(signal.SIGTERM) is mine  # back at once: a third signal
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) is sigint_before
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_signal_inside_an_abandonable_block_raises_at_once_and_only_there():
    """Inside `abandonable(phase)` the first signal raises `StepAbandoned(phase)` (a
    `BaseException`, which `except Exception` lets through); outside it only sets the flag, and
    a block entered after it raises at once."""
    with GracefulStop() as stop:
        with pytest.raises(StepAbandoned) as left, stop.abandonable("rollout"):
            try:
                stop._handle(signal.SIGUSR1, None)
            except Exception:  # noqa: BLE001 - what a reward's error policy might do
                pytest.fail("StepAbandoned was caught as an Exception")
        assert (left.value.phase, left.value.agreed) == ("rollout", False)
        assert stop.signal_name == "SIGUSR1"
        with pytest.raises(StepAbandoned, match="rewards"), stop.abandonable("rewards"):
            pytest.fail("entered after the signal")
    with GracefulStop() as stop:
        stop._handle(signal.SIGTERM, None)  # outside any block: the flag only
        assert stop.signal_name == "SIGTERM"
