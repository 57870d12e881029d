"""The rollout engine: batched sampling with a KV cache, exploration by soft inputs, exact replay.

`generate` samples `n` responses per prompt from any Hugging Face causal LM that accepts
`inputs_embeds`. Prompts are left-padded; position ids are `cumsum(attention_mask) − 1` (the same
helper builds them for replay). Every input, prompt and response alike, goes through
`ngrpo.method.soft_inputs.embed`, and every response position's input is recorded as a `SoftInputs`
row, so `replay_logprobs` (one full-sequence forward over the recorded inputs, the learner's path)
reproduces the rollout's log-probabilities (fp32: within 1e-4, tested).

Decoding (`EngineOptions`, DESIGN section 6): Llama-family models run on the static decoder
(`ngrpo.rollout.step`: preallocated KV cache, the n samples of a prompt share one prefill, the
one-token step captured as a CUDA graph on CUDA); other architectures on the model's own forward
with a growing `DynamicCache` (`ngrpo.rollout.hf.DynamicDecoder`). The per-step math — warping,
sampling, exploration, recording — always runs on all N rows of a chunk, outside the graph: rows
that finished are masked, and the static decoder compacts them out of the batch it feeds the
model (the model step runs on the rows still decoding, padded up to a power of two with CUDA
graphs). Because the random draws keep their (N, ...) shapes, compaction, shared prefill and the
choice of decoder leave the samples unchanged (token-for-token, tested) up to float rounding.

Deviations from the authors' code and from `model.generate`: mixing happens on the input of the next
position (the text always contains the ordinarily sampled y_t), the mixed inputs are recorded for
training, and exploration randomness has its own generator (seeded `seed ^ EXPLORATION_SALT`), so
strategy `none` and `mix_rate = 0` give token-for-token the same rollouts for the same seed.
"""

from __future__ import annotations

import time

import torch

from ngrpo.method.exploration import (
    STRATEGIES,
    ExplorationConfig,
    StepView,
    mixing_gate,
    neighbor_anchors,
    plain,
)
from ngrpo.method.neighbors import NeighborIndex
from ngrpo.method.soft_inputs import SoftInputs, embed, embedding_table
from ngrpo.rollout.batch import RolloutBatch
from ngrpo.rollout.decoders import (
    DecoderPool,
    EngineOptions,
    batch_target,
    compact,
    make_decoder,
)
from ngrpo.rollout.hf import input_embeddings
from ngrpo.rollout.plan import MarkerWatch, make_plan, neighbor_search_table
from ngrpo.rollout.sampling import (
    SamplingParams,
    left_pad,
    position_ids_from_mask,
    sample_tokens,
    token_logprobs,
    warp_logits,
)
from ngrpo.utils.errors import NgrpoError

EXPLORATION_SALT = 0x5EED_1234


def _gate(plan, probs, y, can_mix, explore_gen):
    """Which rows mix at this step (b,), and which of their anchors have no cached neighbours yet
    (b,) bool or None (strategies without a neighbour index); neither reads anything to the host."""
    cfg = plan.exploration
    gate = mixing_gate(can_mix, probs, explore_gen, cfg.mix_rate, cfg.entropy_threshold)  # (b,)
    if plan.index is None:
        return gate, None
    return gate, plan.index.missing(neighbor_anchors(probs, y, cfg.anchor), gate)  # (b,)


def _mix_step(plan, logits, probs, y, gate, table, explore_gen, plain_w):
    """The input records of one step: ids (b, K), weights (b, K), noise (b, d) | None. The
    neighbour index holds every gated anchor already (the loop `fill`ed it)."""
    cfg = plan.exploration
    neighbors = None
    if plan.index is not None:
        neighbors = lambda anchors: plan.index.lookup(anchors, gate, filled=True)  # noqa: E731
    view = StepView(logits, probs, y, table, neighbors, explore_gen)
    mix = STRATEGIES[cfg.strategy](
        view, k=plan.k, anchor=cfg.anchor, mix_temperature=cfg.mix_temperature,
        noise_scale=cfg.noise_scale, weights=cfg.neighbor_weights,
        temperature=plan.sampling.temperature,
    )  # fmt: skip
    keep = gate.unsqueeze(-1)  # (b, 1)
    ids = torch.where(keep, mix.ids, y.unsqueeze(-1))  # (b, K) plain rows: [y, y, ...]
    weights = torch.where(keep, mix.weights, plain_w)  # (b, K) plain rows: [1, 0, ...]
    noise = None if mix.noise is None else mix.noise.masked_fill(~keep, 0.0)  # (b, d)
    return ids, weights, noise


def _distinct_prompts(prompt_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt-major rows (N,) -> (first row of each distinct prompt (u,), prompt number (N,))."""
    change = torch.ones_like(prompt_index, dtype=torch.bool)  # (N,)
    change[1:] = prompt_index[1:] != prompt_index[:-1]
    return change.nonzero().squeeze(1), change.long().cumsum(0) - 1


def _decode_chunk(
    model,
    embedding,
    prompt_ids,
    prompt_mask,
    prompt_index,
    plan,
    gen,
    explore_gen,
    options,
    decoders=None,
) -> dict:
    """Sample one chunk of rows; returns (N, max_new)-shaped buffers and the number of steps run."""
    sampling, k = plan.sampling, plan.k
    n, p = prompt_ids.shape
    device, max_new = prompt_ids.device, sampling.max_new_tokens
    table = embedding_table(embedding).detach()  # (V, d)

    tokens = torch.full((n, max_new), plan.pad_token_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((n, max_new), device=device)
    alive = torch.zeros((n, max_new), dtype=torch.bool, device=device)
    rec_ids = tokens.unsqueeze(-1).repeat(1, 1, k)  # (N, T, K)
    plain_w = plain(tokens[:1, 0], k).weights  # (1, K) the plain weights [1, 0, ...]
    rec_w = plain_w.expand(n, max_new, k).contiguous()  # (N, T, K)
    rec_noise = table.new_zeros(n, max_new, table.shape[1]) if plan.noisy else None  # (N, T, d)
    mixed = torch.zeros((n, max_new), dtype=torch.bool, device=device)
    eligible = torch.zeros((n, max_new), dtype=torch.bool, device=device)
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    watch = None if plan.exploration is None else MarkerWatch(plan.marker, n)

    if decoders is None:
        decoder = make_decoder(model, options, n, p + max_new, device)
    else:
        decoder = decoders.get(model, options, n, p + max_new, device)
    if options.shared_prefill:
        first, expand = _distinct_prompts(prompt_index)  # (u,), (N,)
    else:
        first = expand = torch.arange(n, device=device)
    prompt_embeds = embed(embedding, SoftInputs.from_token_ids(prompt_ids[first]))  # (u, P, d)
    positions = position_ids_from_mask(prompt_mask[first])  # (u, P)
    logits = decoder.prefill(prompt_embeds, prompt_mask[first], positions, expand)  # (N, V)
    slot_rows = None  # (b,) the row each decoder slot holds; None: slot i holds row i
    logits_buf = None  # (N + 1, V) logits by row once the batch is compacted (row N: padding)
    graphs = decoder.cuda_graphs
    row_steps = 0

    steps = 0
    for t in range(max_new):
        warped = warp_logits(logits, sampling.temperature, sampling.top_k, sampling.top_p)
        y, probs = sample_tokens(warped, sampling.temperature, gen)  # (N,), (N, V)
        y = y.masked_fill(finished, plan.pad_token_id)
        tokens[:, t], alive[:, t] = y, ~finished
        logprobs[:, t] = token_logprobs(logits, y, sampling.temperature).masked_fill(finished, 0.0)
        finished = finished | torch.isin(y, plan.eos_ids)
        steps = t + 1

        if watch is None:
            rec_ids[:, t] = y.unsqueeze(-1)
            step = SoftInputs.from_token_ids(y.unsqueeze(1))  # (N, 1, 1)
            live = int((~finished).sum())  # the one host sync per step
        else:
            can_mix = ~finished & ~watch.update(y)  # (N,) EOS and marker count from their step on
            gate, need = _gate(plan, probs, y, can_mix, explore_gen)
            # the one host sync per step: rows still decoding, and anchors missing neighbours
            counts = [(~finished).sum()] + ([] if need is None else [need.sum()])
            live, *missing = torch.stack(counts).tolist()
            if missing and missing[0]:
                plan.index.fill(neighbor_anchors(probs, y, plan.exploration.anchor), need)
            ids, weights, noise = _mix_step(
                plan, logits, probs, y, gate, table, explore_gen, plain_w
            )
            rec_ids[:, t], rec_w[:, t], eligible[:, t], mixed[:, t] = ids, weights, can_mix, gate
            if noise is not None:
                rec_noise[:, t] = noise
                noise = noise.unsqueeze(1)  # (N, 1, d)
            step = SoftInputs(ids.unsqueeze(1), weights.unsqueeze(1), noise)  # (N, 1, K)

        if t == max_new - 1 or live == 0:
            break
        x = embed(embedding, step)  # (N, 1, d) the input of response position t
        if options.compact and decoder.can_compact:
            target = batch_target(live, decoder.rows, n, graphs)
            if target < decoder.rows:
                if slot_rows is None:
                    slot_rows = torch.arange(n, device=device)
                    logits_buf = logits.new_zeros(n + 1, logits.shape[1])
                slot_rows = compact(decoder, slot_rows, finished, live, target)
        row_steps += decoder.rows
        if slot_rows is None:
            logits = decoder.decode(x)  # (N, V)
        else:
            logits_buf[slot_rows] = decoder.decode(x[slot_rows.clamp_max(n - 1)])  # (b, V)
            logits = logits_buf[:n]  # (N, V) rows that finished keep stale (unused) logits

    shift_sum, shift_count = _embed_shift_sum(embedding, tokens, rec_ids, rec_w, rec_noise, mixed)
    neighbor_w = None  # Σ over mixed positions of the non-anchor candidates' total weight
    if plan.exploration is not None and plan.exploration.strategy == "neighbor":
        neighbor_w = (1.0 - rec_w[..., 0])[mixed].sum()
    return {
        "tokens": tokens, "logprobs": logprobs, "alive": alive, "rec_ids": rec_ids,
        "rec_w": rec_w, "rec_noise": rec_noise, "mixed": mixed, "eligible": eligible,
        "shift_sum": shift_sum, "shift_count": shift_count, "neighbor_w": neighbor_w,
        "finished": finished, "steps": steps, "row_steps": row_steps,
        "capture_s": decoder.capture_seconds, "graphs": len(decoder.graphs),
    }  # fmt: skip


def _embed_shift_sum(embedding, tokens, rec_ids, rec_w, rec_noise, mixed):
    """(Σ ‖ẽ − e(y)‖ / ‖e(y)‖, count) over mixed positions whose sampled token has a non-zero
    embedding (computed once, after the loop). A zero row — the padding token's, which Hugging Face
    models keep at 0 — would make the ratio meaningless (one such position measured 1e8), so
    those positions are left out of the mean."""
    noise = None if rec_noise is None else rec_noise[mixed].unsqueeze(0)
    soft = embed(
        embedding, SoftInputs(rec_ids[mixed].unsqueeze(0), rec_w[mixed].unsqueeze(0), noise)
    )
    hard = embedding(tokens[mixed].unsqueeze(0))  # (1, M, d)
    norm = hard.norm(dim=-1).float()  # (1, M)
    measurable = norm > 1e-6
    ratio = (soft - hard).norm(dim=-1).float() / norm.clamp_min(1e-6)  # (1, M)
    return ratio[measurable].sum(), measurable.sum()


def generate(
    model,
    prompts: list[list[int]],
    sampling: SamplingParams,
    *,
    eos_token_id: int | list[int],
    pad_token_id: int,
    exploration: ExplorationConfig | None = None,
    answer_start_ids: list[int] | None = None,
    training: bool = False,
    seed: int = 0,
    batch_size: int | None = None,
    neighbor_index: NeighborIndex | None = None,
    engine: EngineOptions | None = None,
    decoders: DecoderPool | None = None,
) -> RolloutBatch:
    """Sample `sampling.n` responses for each prompt (token-id lists); see the module docstring.

    Mixing happens only when `training` is true and `exploration.strategy != "none"`; then
    `answer_start_ids` (see `ngrpo.method.exploration.answer_start_ids`) is required.
    `eos_token_id=[]` disables early stopping (fixed-length generation, used by the benchmark).
    `batch_size` splits the N = len(prompts) * n rows into sequential chunks (the generators carry
    over). Pass a long-lived `neighbor_index` to keep its cache warm across calls, and a
    `decoders` pool to keep the static decoder; after changing the model's weights call
    `neighbor_index.invalidate()` and `decoders.weights_changed()` (the version counter they also
    watch misses fused optimizers). `engine` chooses the decoder (default `EngineOptions()`).
    """
    sampling.validate()
    engine = engine or EngineOptions()
    engine.validate()
    if not prompts or any(len(p) == 0 for p in prompts):
        raise NgrpoError("generate needs at least one prompt and no empty prompt")
    if batch_size is not None and batch_size < 1:
        raise NgrpoError(f"batch_size must be >= 1 or None, got {batch_size}")
    embedding = input_embeddings(model)
    device = embedding_table(embedding).device
    explore = exploration if training and exploration is not None and exploration.enabled else None
    search = None
    if explore is not None and explore.strategy == "neighbor":
        search = neighbor_search_table(model, explore.neighbor_table)
    plan = make_plan(
        sampling,
        embedding,
        eos_token_id,
        pad_token_id,
        explore,
        answer_start_ids,
        neighbor_index,
        search,
    )

    rows = [p for p in prompts for _ in range(sampling.n)]
    prompt_ids, prompt_mask = left_pad(rows, pad_token_id, device)  # (N, P)
    prompt_index = torch.arange(len(prompts), device=device).repeat_interleave(sampling.n)  # (N,)
    gen = torch.Generator(device=device).manual_seed(seed)
    explore_gen = torch.Generator(device=device).manual_seed(seed ^ EXPLORATION_SALT)
    chunk = batch_size or len(rows)

    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        with torch.no_grad():
            parts = [
                _decode_chunk(
                    model, embedding, prompt_ids[i : i + chunk], prompt_mask[i : i + chunk],
                    prompt_index[i : i + chunk], plan, gen, explore_gen, engine, decoders,
                )
                for i in range(0, len(rows), chunk)
            ]  # fmt: skip
    finally:
        model.train(was_training)
    batch = _assemble(parts, prompt_ids, prompt_mask, len(prompts), sampling.n)
    elapsed = time.perf_counter() - start  # after _assemble's host syncs: all kernels finished
    batch.stats["rollout/seconds"] = elapsed
    batch.stats["rollout/tokens_per_s"] = batch.stats["rollout/tokens"] / max(elapsed, 1e-9)
    return batch


def _assemble(parts: list[dict], prompt_ids, prompt_mask, num_prompts: int, n: int) -> RolloutBatch:
    steps = max(part["steps"] for part in parts)

    def cat(key: str) -> torch.Tensor:
        return torch.cat([part[key][:, :steps] for part in parts], dim=0)

    response_mask = cat("alive").long()  # (N, T)
    noise = cat("rec_noise") if parts[0]["rec_noise"] is not None else None
    response_soft = SoftInputs(cat("rec_ids"), cat("rec_w"), noise)  # (N, T, K)
    mixed, eligible = cat("mixed"), cat("eligible")
    finished = torch.cat([part["finished"] for part in parts])
    n_mixed, n_eligible = int(mixed.sum()), int(eligible.sum())
    shift = float(sum(part["shift_sum"] for part in parts))
    shift_count = int(sum(part["shift_count"] for part in parts))
    tokens = int(response_mask.sum())
    row_steps = sum(part["row_steps"] for part in parts)
    decode_calls = sum(part["steps"] - 1 for part in parts)  # the last step feeds nothing back
    stats = {
        "rollout/tokens": float(tokens),
        "rollout/response_len": tokens / response_mask.shape[0],
        "rollout/prompt_len": float(prompt_mask.sum()) / prompt_mask.shape[0],
        "rollout/truncated_frac": float((~finished).float().mean()),
        "rollout/mixed_tokens": float(n_mixed),
        "rollout/eligible_tokens": float(n_eligible),  # mixed_frac's denominator
        "rollout/mixed_frac": n_mixed / n_eligible if n_eligible else 0.0,
        "rollout/embed_shift_tokens": float(shift_count),  # embed_shift's denominator
        "rollout/embed_shift": shift / shift_count if shift_count else 0.0,
        # rows the model ran per decoding step (compaction lowers it below the batch size)
        "rollout/decoded_rows": row_steps / max(1, decode_calls),
        "rollout/graph_capture_s": sum(part["capture_s"] for part in parts),
        "rollout/graphs": float(sum(part["graphs"] for part in parts)),
    }
    if parts[0]["neighbor_w"] is not None:  # strategy neighbor only
        weight = float(sum(part["neighbor_w"] for part in parts))
        stats["rollout/neighbor_weight"] = weight / n_mixed if n_mixed else 0.0
    return RolloutBatch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=cat("tokens"),
        response_mask=response_mask,
        logprobs=cat("logprobs"),
        soft_inputs=SoftInputs.cat([SoftInputs.from_token_ids(prompt_ids), response_soft], dim=1),
        mixed=mixed,
        stats=stats,
        prompt_index=torch.arange(num_prompts, device=prompt_ids.device).repeat_interleave(n),
        truncated=~finished,
        eligible=eligible,
    )
