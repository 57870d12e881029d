"""Paths that only a GPU run used to take, forced on CPU: collectives' tensors on the process
group's device (NCCL has no CPU backend), CUDA RNG states restored on fewer GPUs than saved them,
the end-of-turn token of a chat model's generation config in training rollouts, and a replaced
kept decoder freed before its successor is built."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

TESTS = Path(__file__).parent

_RANK0_PID = """
import os, sys, tempfile, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[1])
from collective_devices import install
from ngrpo.trainer.checkpoints import _rank0_pid
store = dist.FileStore(os.path.join(tempfile.mkdtemp(), "store"), 1)
dist.init_process_group("gloo", store=store, rank=0, world_size=1)
install()
assert _rank0_pid(torch.device("cpu")) == os.getpid()
try:
    dist.broadcast(torch.tensor([1]), src=0)  # what _rank0_pid did: a CPU tensor under NCCL
except AssertionError as err:
    print("refused:", err)
dist.destroy_process_group()
"""


def test_rank0_pid_broadcasts_on_the_accelerator_device_and_the_check_refuses_a_cpu_tensor():
    # The two-process tests run with tests/collective_devices.py installed; here one process
    # (gloo) shows both sides: the FSDP save's pid broadcast passes, a default-device tensor not.
    done = subprocess.run(
        [sys.executable, "-c", _RANK0_PID, str(TESTS)], capture_output=True, text=True,
        timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "refused: torch.distributed.broadcast got a tensor on torch's default device" in (
        done.stdout
    )


def _run(base, out, *extra):
    from ngrpo.config import load_config
    from ngrpo.trainer.setup import _setup

    cfg = load_config("tiny_grpo", [
        f"model.path={base}", f"output_dir={out}", "train.prompts_per_step=2",
        "train.mini_batch_prompts=2", "rollout.num_generations=4",
        "rollout.max_completion_length=24", "eval.at_start=false", "eval.every=0", *extra,
    ])  # fmt: skip
    return _setup(cfg, out, resume=False)


def test_training_rollouts_stop_at_the_generation_configs_end_of_turn(base_model_dir, tmp_path):
    # A chat model's end of turn (<|im_end|>, <|eot_id|>) is often only in its generation config;
    # evaluation stopped on it, training rollouts did not (run on, truncated, rewarded past it).
    from ngrpo.trainer.step import _rollout_round

    run = _run(base_model_dir, tmp_path / "run")
    try:
        eos = run.tokenizer.eos_token_id
        batch, _, _ = _rollout_round(run, [0, 1], 0, [])
        sampled = batch.response_ids[batch.response_mask.bool()]
        sampled = sampled[(sampled != eos) & (sampled != run.tokenizer.pad_token_id)]
        turn_end = int(torch.mode(sampled).values)  # a token every rollout is likely to emit
        run.policy.generation_config.eos_token_id = [eos, turn_end]
        batch, _, _ = _rollout_round(run, [0, 1], 0, [])
    finally:
        run.rewards.close()
        run.pool.close()
    ends = 0
    for ids, mask in zip(batch.response_ids, batch.response_mask.bool(), strict=True):
        kept = ids[mask].tolist()
        if turn_end in kept:  # the row ends at its first end of turn, not truncated
            assert kept.index(turn_end) == len(kept) - 1
            ends += 1
    assert ends > 0
    assert batch.stats["rollout/truncated_frac"] < 1.0


def test_resume_restores_cuda_rng_states_on_fewer_gpus_than_saved_them(monkeypatch):
    # Rank 0 saves the RNG state of every visible GPU; a resume with fewer visible GPUs (README:
    # resume under any world size) must not index past them. Emulated: 1 GPU present, 3 saved.
    from ngrpo.trainer.checkpoints import _rng_state, _set_rng_state

    state, restored = _rng_state(), []  # this machine's (CPU) streams

    def set_rng_state(new_state, device="cuda"):
        if device not in (0, "cuda"):
            raise IndexError(f"CUDA device {device} does not exist (1 visible)")
        restored.append((device, new_state))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", set_rng_state)  # set_rng_state_all's
    gpu_states = [torch.full((16,), i, dtype=torch.uint8) for i in range(3)]
    _set_rng_state({**state, "cuda": gpu_states})
    assert len(restored) == 1 and restored[0][0] in (0, "cuda")
    assert torch.equal(restored[0][1], gpu_states[0])


def test_a_replaced_kept_decoder_is_freed_before_its_successor_is_built(monkeypatch):
    # Prompts that grow replace the kept decoder; its KV cache and weight copies must be gone
    # before the new one allocates, or the peak holds both (the memory plan counts one).
    import weakref

    from factories import tiny_lm

    import ngrpo.rollout.decoders as decoders

    model, pool, cpu = tiny_lm(), decoders.DecoderPool(), torch.device("cpu")
    old = weakref.ref(pool.get(model, decoders.EngineOptions("static"), 2, 8, cpu))
    alive_at_build, real = [], decoders.StaticDecoder

    def building(*args, **kwargs):
        alive_at_build.append(old() is not None)
        return real(*args, **kwargs)

    monkeypatch.setattr(decoders, "StaticDecoder", building)
    new = pool.get(model, decoders.EngineOptions("static"), 4, 8, cpu)  # more rows: replaced
    assert alive_at_build == [False]
    assert pool.decoder is new and new.capacity == 4
