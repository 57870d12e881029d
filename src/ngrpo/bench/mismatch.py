"""`ngrpo bench mismatch`: the rollout–learner gap under mixed precision, where it starts, what it
costs to close.

For a model (the embedded base, or random weights of a preset's shape) held in fp32 and run under
autocast in the compute dtype (bf16 by default), as training runs it, and for each decoder
precision (`rollout.precision`: `compute`, `learner`) and strategy:
- `mismatch`: rollouts of `prompts` × `n` responses (training mode: mixing at `mix_rate` for
  strategies other than `none`), then the learner's log-probabilities of the same records (the
  policy module, one pass without gradients, as `train.old_logprobs: recompute` computes them),
  compared by `ngrpo.method.rollout_correction.mismatch_metrics` (`mismatch/*`, and the positions
  right after a mixed input separately: `after_mixed_tokens` of them);
- `layers`: where the two paths part: the residual stream entering every decoder layer and the
  final norm (forward pre-hooks on `input_layernorm` and the final `norm`, modules both paths
  call), decode path vs learner path, at every scored response position: relative difference
  ‖Δh‖ / ‖h‖, mean and max, over the batch's first `PROBE_ROWS` rows. This run decodes without
  CUDA graphs (hooks do not fire on a replay),
  without compaction and without shared prefill, so row r of every call is row r of the batch;
  those change no value (the engine's tests);
- `decode_ms_per_step` (`--time-decode`): a separate fixed-length rollout (no EOS) with the
  engine's defaults (CUDA graphs on CUDA), per precision: what `learner`'s fp32 head costs.
Costs of `train.old_logprobs: recompute`: `recompute_s` (one pass without gradients over the
rollouts in micro-batches of `micro_batch` rows) against `update_s` (forward + backward over the
same micro-batches), and their ratio.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from ngrpo.bench.timing import sync_device
from ngrpo.learner.policy import SoftInputPolicy, policy_scores
from ngrpo.learner.update import (
    LearnerParams,
    micro_batches,
    recompute_old_logprobs,
    trim_padding,
)
from ngrpo.method.exploration import ExplorationConfig
from ngrpo.method.rollout_correction import after_mixed, mismatch_metrics
from ngrpo.rollout import EngineOptions, RolloutBatch, SamplingParams, generate
from ngrpo.rollout.step import PRECISIONS

PROBE_ENGINE = dict(cuda_graphs="off", compact=False, shared_prefill=False)


PROBE_ROWS = 8  # rows whose residual streams the probe keeps (host memory stays small at scale)


class _ResidualProbe:
    """Inputs of every decoder layer's `input_layernorm` and of the final norm, per call, for the
    batch's first `PROBE_ROWS` rows."""

    def __init__(self, model) -> None:
        decoder = model.get_decoder()
        modules = [layer.input_layernorm for layer in decoder.layers] + [decoder.norm]
        self.calls: list[list[torch.Tensor]] = [[] for _ in modules]
        self.handles = [
            module.register_forward_pre_hook(self._hook(i)) for i, module in enumerate(modules)
        ]

    def _hook(self, i: int):
        def record(module, inputs):
            # a copy: the decoder feeds layer 0 from a buffer it overwrites at every step
            rows = inputs[0][:PROBE_ROWS].detach()
            self.calls[i].append(rows.to("cpu", torch.float32, copy=True))

        return record

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _decode_states(calls: list[torch.Tensor]) -> torch.Tensor:
    """One probe point's decode-path inputs as (N, P + S, d): the prefill call (N, P, d), then one
    column per decoding step."""
    return torch.cat(calls, dim=1)


def _layer_gaps(decode_calls, learner_calls, batch: RolloutBatch) -> list[dict[str, float]]:
    """Relative residual difference per probe point at the scored response inputs: the input of
    response position t (sequence column P + t) reaches a scored logit when token t + 1 exists."""
    p = batch.prompt_ids.shape[1]
    scored = batch.response_mask[:PROBE_ROWS, 1:].bool().cpu()  # (n, T - 1): t predicts t + 1
    out = []
    for i, (dec, learn) in enumerate(zip(decode_calls, learner_calls, strict=True)):
        decoded = _decode_states(dec)  # (N, P + S, d)
        width = min(decoded.shape[1] - p, scored.shape[1])
        d = decoded[:, p : p + width]  # (N, W, d)
        ref = learn[0][:, p : p + width]  # (N, W, d) one full-sequence forward
        mask = scored[:, :width]
        rel = ((d - ref).norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-12))[mask]  # (M,)
        name = f"layer_{i}" if i < len(decode_calls) - 1 else "final_norm"
        out.append({"point": name, "rel_mean": float(rel.mean()), "rel_max": float(rel.max())})
    return out


def _learner_logprobs(model, batch: RolloutBatch, temperature: float, dtype) -> torch.Tensor:
    device = batch.response_ids.device
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        logp, _ = policy_scores(SoftInputPolicy(model), batch, temperature)
    return logp


def _rollouts(model, prompts, n, new_tokens, strategy, mix_rate, marker, dtype, engine, seed,
              eos_token_id, pad_token_id) -> RolloutBatch:  # fmt: skip
    device = model.get_input_embeddings().weight.device
    exploration = ExplorationConfig(strategy=strategy, mix_top_k=2, mix_rate=mix_rate)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        return generate(
            model, prompts, SamplingParams(n=n, max_new_tokens=new_tokens),
            eos_token_id=eos_token_id, pad_token_id=pad_token_id, exploration=exploration,
            answer_start_ids=marker, training=True, seed=seed, engine=engine,
        )  # fmt: skip


def _recompute_cost(model, batch: RolloutBatch, micro_batch: int, dtype) -> dict[str, float]:
    """Seconds of the π_old pass (no gradients) and of forward + backward, same micro-batches."""
    device = batch.response_ids.device
    rows = len(batch.response_ids)
    params = LearnerParams(group_size=rows, mini_batch_groups=1, micro_batch_size=micro_batch)
    policy = SoftInputPolicy(model)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    lengths = batch.prompt_mask.sum(-1).cpu(), batch.response_mask.sum(-1).cpu()
    parts = [trim_padding(batch.select(rows.to(device)))[0]
             for rows in micro_batches(*lengths, micro_batch)]  # fmt: skip

    def update() -> None:  # the learner's micro-batches, forward + backward
        for part in parts:
            with autocast:
                logp, _ = policy_scores(policy, part, 1.0)
            logp.sum().backward()
        model.zero_grad(set_to_none=True)

    def recompute() -> None:
        with autocast:
            recompute_old_logprobs(policy, batch, params)

    times = {}
    for name, fn in (("update_s", update), ("recompute_s", recompute)):
        fn()  # warm-up
        sync_device(device)
        start = time.perf_counter()
        fn()
        sync_device(device)
        times[name] = time.perf_counter() - start
    times["recompute_over_update"] = times["recompute_s"] / times["update_s"]
    return times


def _decode_ms(model, prompts, n, new_tokens, precision, dtype, pad_token_id) -> float:
    """ms per decoding step of a fixed-length rollout (no EOS), after a warm-up call."""
    device = model.get_input_embeddings().weight.device
    engine = EngineOptions(precision=precision)
    sampling = SamplingParams(n=n, max_new_tokens=new_tokens)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def call() -> float:
        sync_device(device)
        start = time.perf_counter()
        with autocast:
            batch = generate(model, prompts, sampling, eos_token_id=[], pad_token_id=pad_token_id,
                             seed=1, engine=engine)  # fmt: skip
        sync_device(device)
        return time.perf_counter() - start - batch.stats["rollout/graph_capture_s"]

    call()  # warm-up
    return 1000 * call() / new_tokens


def mismatch_report(
    model,
    prompts: list[list[int]],
    *,
    n: int,
    new_tokens: int,
    marker: list[int],
    eos_token_id: int | list[int],
    pad_token_id: int,
    dtype: torch.dtype = torch.bfloat16,
    strategies: tuple[str, ...] = ("none", "neighbor"),
    precisions: tuple[str, ...] = PRECISIONS,
    mix_rate: float = 0.2,
    micro_batch: int = 8,
    time_decode: bool = False,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    checkpoint: Callable[[dict], None] | None = None,
) -> dict:
    """The JSON-ready report (see the module docstring). `model`: fp32 weights, eval mode.
    `checkpoint` gets the report so far after each precision (a run cut short keeps it)."""
    device = model.get_input_embeddings().weight.device
    report: dict = {
        "device": str(device), "dtype": str(dtype).removeprefix("torch."), "prompts": len(prompts),
        "n": n, "new_tokens": new_tokens, "mix_rate": mix_rate, "precisions": {},
    }  # fmt: skip
    batch = None
    for precision in precisions:
        entry = report["precisions"][precision] = {}
        for strategy in strategies:
            if progress is not None:
                progress(f"{precision} / {strategy}")
            probe = _ResidualProbe(model)
            try:
                batch = _rollouts(
                    model, prompts, n, new_tokens, strategy, mix_rate, marker, dtype,
                    EngineOptions("static", precision=precision, **PROBE_ENGINE), seed,
                    eos_token_id, pad_token_id,
                )  # fmt: skip
                decode_calls = probe.calls
                probe.calls = [[] for _ in decode_calls]
                logp = _learner_logprobs(model, batch, 1.0, dtype)
                learner_calls = probe.calls
            finally:
                probe.close()
            mask = batch.response_mask
            entry[strategy] = {
                "tokens": int(mask.sum()),
                "mixed_tokens": int((batch.mixed & mask.bool()).sum()),
                # the tokens `mismatch/mixed/*` measures: the first to see a mixed input
                "after_mixed_tokens": int((after_mixed(batch.mixed) & mask.bool()).sum()),
                "mismatch": mismatch_metrics(logp, batch.logprobs, mask, batch.mixed),
                "layers": _layer_gaps(decode_calls, learner_calls, batch),
            }
        if time_decode:
            if progress is not None:
                progress(f"{precision}: decode time")
            entry["decode_ms_per_step"] = _decode_ms(
                model, prompts, n, new_tokens, precision, dtype, pad_token_id
            )
        if checkpoint is not None:
            checkpoint(report)
    if progress is not None:
        progress("recompute cost")
    report["old_logprobs_cost"] = _recompute_cost(model, batch, micro_batch, dtype)
    return report
