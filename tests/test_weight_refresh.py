"""Derived copies of the weights follow every optimizer step, whichever AdamW the trainer builds.

On CUDA the trainer's AdamW is fused, and the fused kernel writes the parameters without bumping
their version counter (torch 2.13, also on CPU): a kept decoder's bf16 weight copies and the
neighbour index, which used to watch that counter, kept the step-0 weights. The trainer now tells
them after every update (`ngrpo.trainer.step.weights_changed`). Each AdamW kind the trainer can
build runs here on CPU (fp32 master weights, bf16 autocast: the decoder owns bf16 copies) for one
step of the trainer's own, one kind after the other on the same run; after each step the kept
decoder must sample exactly what a fresh decoder does and the kept neighbour index must answer
exactly what a fresh brute force over the current table does.
"""

from __future__ import annotations

import pytest
import torch

import ngrpo.trainer.setup
from ngrpo.config import load_config
from ngrpo.method.neighbors import NeighborIndex, bruteforce_neighbors
from ngrpo.rollout import EngineOptions, SamplingParams, generate, neighbor_search_table
from ngrpo.trainer.setup import ADAMW_KINDS, _optimizer, _setup
from ngrpo.trainer.step import _train_step


def _config(base, out):
    return load_config("tiny_ngrpo", [
        f"model.path={base}", f"output_dir={out}", "model.dtype=bfloat16",
        "rollout.keep_decoder=true", "rollout.kv_cache=static", "train.prompts_per_step=2",
        "train.mini_batch_prompts=2", "rollout.num_generations=2",
        "rollout.max_completion_length=8", "train.learning_rate=0.01", "train.beta=0",
        "train.entropy_coef=0.01", "eval.at_start=false", "eval.every=0",
        "exploration.mix_rate=1.0", "exploration.entropy_threshold=null",
    ])  # fmt: skip


def _sample(run, decoders, index):
    cfg = run.cfg
    with run.accelerator.autocast():
        return generate(
            run.policy, sorted(run.prompts, key=len)[:2], SamplingParams(n=2, max_new_tokens=8),
            eos_token_id=run.tokenizer.eos_token_id, pad_token_id=run.tokenizer.pad_token_id,
            exploration=cfg.exploration, answer_start_ids=run.answer_start_ids, training=True,
            seed=7, neighbor_index=index, engine=EngineOptions("static"), decoders=decoders,
        )  # fmt: skip


@pytest.mark.numerics
def test_kept_decoder_and_neighbor_index_follow_every_optimizer_step(
    base_model_dir, tmp_path, monkeypatch
):
    run = _setup(_config(base_model_dir, tmp_path / "run"), tmp_path / "run", resume=False)
    try:
        index, cfg = run.neighbor_index, run.cfg.exploration
        table = index.table()
        for kind, options in ADAMW_KINDS.items():  # one step with each, as the trainer builds it
            monkeypatch.setattr(ngrpo.trainer.setup, "_adamw_options", lambda _, o=options: o)
            optimizer, run.scheduler = _optimizer(run.cfg, run.model)
            for key, value in options.items():  # the optimizer really is this kind
                assert optimizer.defaults[key] is value, kind
            run.optimizer = run.accelerator.prepare(optimizer)  # as `_setup` does
            before = table.detach().clone()
            _train_step(run)
            assert not torch.equal(table, before), kind  # the step moved the searched table
            decoder, reused = run.decoders.decoder, run.decoders.reused
            assert decoder.weights.nbytes > 0  # bf16 copies of fp32 masters
            kept = _sample(run, run.decoders, index)  # on the decoder of the step's rollout
            assert run.decoders.decoder is decoder and run.decoders.reused == reused + 1
            fresh_index = NeighborIndex(neighbor_search_table(run.policy, cfg.neighbor_table),
                                        index.k, index.metric)  # fmt: skip
            fresh = _sample(run, None, fresh_index)
            assert kept.stats["rollout/mixed_tokens"] > 0, kind  # the index was asked
            assert torch.equal(kept.response_ids, fresh.response_ids), kind
            assert torch.equal(kept.logprobs, fresh.logprobs), kind
            ids = torch.arange(table.shape[0])
            expected, _ = bruteforce_neighbors(table, ids, index.k, index.metric)
            assert torch.equal(index.lookup(ids), expected), kind
    finally:
        run.rewards.close()
        run.pool.close()
