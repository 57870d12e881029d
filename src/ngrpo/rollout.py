"""The rollout engine: batched sampling with a KV cache, exploration by soft inputs, exact replay.

`generate` samples `n` responses per prompt from any Hugging Face causal LM that accepts
`inputs_embeds`. Prompts are left-padded; position ids are `cumsum(attention_mask) − 1` (the same
helper builds them for replay); the model runs one prefill over the prompts and then one step per
token with a `DynamicCache`. Every input, prompt and response alike, goes through
`ngrpo.soft_inputs.embed`, and every response position's input is recorded as a `SoftInputs` row,
so `replay_logprobs` (one full-sequence forward over the recorded inputs, the learner's path)
reproduces the rollout's log-probabilities (fp32: within 1e-4, tested).

Sampling at step t: logits z_t (fp32) -> divide by temperature -> top-k (ties at the k-th value are
kept) -> top-p (smallest prefix of the sorted distribution with mass >= top_p) -> softmax = p_t ->
an exponential race (`argmax p / Exp(1)`) with the engine's generator. `temperature = 0` means
greedy (argmax).

Recorded `logprobs`: log softmax(z_t / temperature) at the sampled token, i.e. the
temperature-scaled policy *before* top-k/top-p truncation (temperature 0 records temperature 1).
This is the distribution the learner differentiates (as in TRL and verl); with the training
defaults (top_k = 0, top_p = 1) it is exactly the sampling distribution. Mixing weights, in
contrast, use the truncated p_t (see `ngrpo.exploration`).

Deviations from the authors' code and from `model.generate`: mixing happens on the input of the next
position (the text always contains the ordinarily sampled y_t), the mixed inputs are recorded for
training, and exploration randomness has its own generator (seeded `seed ^ EXPLORATION_SALT`), so
strategy `none` and `mix_rate = 0` give token-for-token the same rollouts for the same seed.
Sequences that finished keep being fed padding until the whole chunk is done (no compaction).
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from dataclasses import dataclass, field

import torch

from ngrpo.errors import NgrpoError
from ngrpo.exploration import (
    NOISE_STRATEGIES,
    STRATEGIES,
    ExplorationConfig,
    StepView,
    mixing_gate,
    plain,
)
from ngrpo.neighbors import NeighborIndex
from ngrpo.soft_inputs import SoftInputs, embed, embedding_table

log = logging.getLogger(__name__)

EXPLORATION_SALT = 0x5EED_1234


@dataclass
class SamplingParams:
    """How responses are sampled (TRL names: num_generations = n, max_completion_length)."""

    n: int = 1  # responses per prompt
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # 1 = off
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 256

    def validate(self) -> None:
        if self.n < 1:
            raise NgrpoError(f"sampling.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise NgrpoError(
                f"sampling.temperature must be >= 0 (0 = greedy), got {self.temperature}"
            )
        if not 0.0 < self.top_p <= 1.0:
            raise NgrpoError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise NgrpoError(f"sampling.top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.max_new_tokens < 1:
            raise NgrpoError(f"sampling.max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class RolloutBatch:
    """Rollouts, rows ordered prompt-major: row i*n + j is sample j of prompt i."""

    prompt_ids: torch.LongTensor  # (N, P) left-padded with the pad id
    prompt_mask: torch.LongTensor  # (N, P) 1 on prompt tokens
    response_ids: torch.LongTensor  # (N, T) right-padded with the pad id
    response_mask: torch.LongTensor  # (N, T) 1 up to and including EOS
    logprobs: torch.Tensor  # (N, T) log softmax(z/temperature) of each sampled token; 0 on padding
    soft_inputs: SoftInputs  # (N, P + T, K) records of the FULL sequence, prompt then response
    mixed: torch.BoolTensor  # (N, T) the input recorded at this response position is mixed
    stats: dict[str, float]  # rollout/* metrics
    prompt_index: torch.LongTensor  # (N,) which prompt each row answers
    truncated: torch.BoolTensor | None = None  # (N,) stopped by max_new_tokens, not by EOS
    eligible: torch.BoolTensor | None = field(default=None, repr=False)  # (N, T) gate could fire

    @property
    def attention_mask(self) -> torch.LongTensor:
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)  # (N, P + T)

    def select(self, rows: torch.Tensor | slice | list[int]) -> RolloutBatch:
        """A subset of rows (e.g. a learner mini-batch); `stats` are shared, not recomputed."""

        def pick(x):
            return None if x is None else x[rows]

        return RolloutBatch(
            prompt_ids=self.prompt_ids[rows], prompt_mask=self.prompt_mask[rows],
            response_ids=self.response_ids[rows], response_mask=self.response_mask[rows],
            logprobs=self.logprobs[rows], soft_inputs=self.soft_inputs.select(rows),
            mixed=self.mixed[rows], stats=self.stats, prompt_index=self.prompt_index[rows],
            truncated=pick(self.truncated), eligible=pick(self.eligible),
        )  # fmt: skip

    def responses(self) -> list[list[int]]:
        """Each row's response ids up to and including EOS."""
        lengths = self.response_mask.sum(-1).tolist()
        return [row[:n] for row, n in zip(self.response_ids.tolist(), lengths, strict=True)]


# ---------------------------------------------------------------------------------------- math


def warp_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, then top-k, then top-p: logits (B, V) -> warped logits with -inf outside."""
    scaled = logits / temperature if temperature > 0 else logits  # (B, V)
    vocab = scaled.shape[-1]
    if 0 < top_k < vocab:
        kth = scaled.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = scaled.sort(dim=-1, descending=True)  # (B, V)
        sorted_probs = sorted_logits.softmax(-1)
        mass_before = sorted_probs.cumsum(-1) - sorted_probs  # (B, V)
        drop_sorted = mass_before >= top_p  # the first token always stays (mass_before = 0)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # (B, V)
        scaled = scaled.masked_fill(drop, float("-inf"))
    return scaled


def sample_tokens(
    warped: torch.Tensor, temperature: float, generator: torch.Generator
) -> tuple[torch.LongTensor, torch.Tensor]:
    """Sample from warped logits (B, V): token ids (B,) and the distribution p_t (B, V)."""
    if temperature == 0:
        tokens = warped.argmax(-1)  # (B,)
        return tokens, torch.nn.functional.one_hot(tokens, warped.shape[-1]).to(warped.dtype)
    probs = warped.softmax(-1)  # (B, V)
    # Exponential race: argmax p_v / E_v with E_v ~ Exp(1) picks v with probability p_v. Same
    # distribution as torch.multinomial, cheaper, and free of a host sync on GPU (as in vLLM).
    race = torch.empty_like(probs).exponential_(generator=generator)  # (B, V)
    return (probs / race).argmax(-1), probs


def token_logprobs(
    logits: torch.Tensor, tokens: torch.LongTensor, temperature: float
) -> torch.Tensor:
    """log softmax(logits / temperature) at `tokens`: logits (..., V), tokens (...) -> (...)."""
    scale = temperature if temperature > 0 else 1.0
    logp = torch.log_softmax(logits.float() / scale, dim=-1)  # (..., V)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def position_ids_from_mask(mask: torch.Tensor) -> torch.LongTensor:
    """Position ids for a left-padded mask (B, L): 0, 1, ... over real tokens, 0 on left padding."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)  # (B, L)


def left_pad(
    prompts: list[list[int]], pad_token_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Token lists -> ids (B, P) left-padded with `pad_token_id` and mask (B, P)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
    return ids.to(device), mask.to(device)


# ---------------------------------------------------------------------------------------- model


def input_embeddings(model) -> torch.nn.Module:
    """The model's input-embedding module, or an `NgrpoError` saying why it cannot be used."""
    try:
        module = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        module = None
    if module is None:
        raise NgrpoError(
            f"{type(model).__name__} has no input embeddings (get_input_embeddings()); the rollout "
            "engine needs a causal LM that accepts inputs_embeds"
        )
    return module


@functools.cache
def _forward_signature(model_class: type) -> tuple[str, bool]:
    """(name of the cache argument, whether `logits_to_keep` is accepted) for a model class."""
    params = inspect.signature(model_class.forward).parameters
    # transformers 5.24 renamed `past_key_values` to `cache` (old name deprecated until 5.40).
    return ("cache" if "cache" in params else "past_key_values"), "logits_to_keep" in params


def _forward(model, inputs_embeds, attention_mask, position_ids, cache=None, last_only=False):
    cache_kwarg, has_logits_to_keep = _forward_signature(type(model))
    kwargs = {"use_cache": cache is not None}
    if cache is not None:
        kwargs[cache_kwarg] = cache
    if last_only and has_logits_to_keep:
        kwargs["logits_to_keep"] = 1
    out = model(
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        **kwargs,
    )
    return out.logits


def _new_cache(model):
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


# ---------------------------------------------------------------------------------------- engine


@dataclass
class _Plan:
    """Everything the decoding loop needs besides the model, resolved once."""

    sampling: SamplingParams
    eos_ids: torch.LongTensor  # (E,)
    pad_token_id: int
    exploration: ExplorationConfig | None  # None: plain sampling, no gate
    marker: torch.LongTensor | None  # (M,) answer-start ids
    index: NeighborIndex | None
    k: int  # record width

    @property
    def noisy(self) -> bool:
        return self.exploration is not None and self.exploration.strategy in NOISE_STRATEGIES


class _MarkerWatch:
    """Per-row flag: has the response emitted the answer-start marker (a token sequence) yet."""

    def __init__(self, marker: torch.LongTensor, rows: int) -> None:
        self.marker = marker  # (M,)
        self.tail = torch.full((rows, len(marker)), -1, dtype=torch.long, device=marker.device)
        self.seen = torch.zeros(rows, dtype=torch.bool, device=marker.device)  # (b,)

    def update(self, y: torch.LongTensor) -> torch.BoolTensor:
        self.tail = torch.cat([self.tail[:, 1:], y.unsqueeze(-1)], dim=1)  # (b, M) last M tokens
        self.seen |= (self.tail == self.marker).all(-1)
        return self.seen


def _mix_step(plan, logits, probs, y, can_mix, table, explore_gen, plain_w):
    """The input records of one step: gate (b,), ids (b, K), weights (b, K), noise (b, d)|None."""
    cfg = plan.exploration
    gate = mixing_gate(can_mix, probs, explore_gen, cfg.mix_rate, cfg.entropy_threshold)  # (b,)
    neighbors = None if plan.index is None else (lambda anchors: plan.index.lookup(anchors, gate))
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
    return gate, ids, weights, noise


def _decode_chunk(model, embedding, prompt_ids, prompt_mask, plan, gen, explore_gen) -> dict:
    """Sample one chunk of rows; returns (b, max_new)-shaped buffers and the number of steps run."""
    sampling, k = plan.sampling, plan.k
    b, p = prompt_ids.shape
    device, max_new = prompt_ids.device, sampling.max_new_tokens
    table = embedding_table(embedding).detach()  # (V, d)

    tokens = torch.full((b, max_new), plan.pad_token_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((b, max_new), device=device)
    alive = torch.zeros((b, max_new), dtype=torch.bool, device=device)
    rec_ids = tokens.unsqueeze(-1).repeat(1, 1, k)  # (b, T, K)
    plain_w = plain(tokens[:1, 0], k).weights  # (1, K) the plain weights [1, 0, ...]
    rec_w = plain_w.expand(b, max_new, k).contiguous()  # (b, T, K)
    rec_noise = table.new_zeros(b, max_new, table.shape[1]) if plan.noisy else None  # (b, T, d)
    mixed = torch.zeros((b, max_new), dtype=torch.bool, device=device)
    eligible = torch.zeros((b, max_new), dtype=torch.bool, device=device)
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    watch = None if plan.exploration is None else _MarkerWatch(plan.marker, b)

    attention = torch.cat([prompt_mask, prompt_mask.new_ones(b, max_new)], dim=1)  # (b, P + T)
    next_pos = prompt_mask.sum(-1, keepdim=True)  # (b, 1) position of response token 0
    cache = _new_cache(model)
    prompt_embeds = embed(embedding, SoftInputs.from_token_ids(prompt_ids))  # (b, P, d)
    positions = position_ids_from_mask(prompt_mask)  # (b, P)
    logits = _forward(model, prompt_embeds, prompt_mask, positions, cache, last_only=True)
    logits = logits[:, -1].float()  # (b, V)

    steps = 0
    for t in range(max_new):
        warped = warp_logits(logits, sampling.temperature, sampling.top_k, sampling.top_p)
        y, probs = sample_tokens(warped, sampling.temperature, gen)  # (b,), (b, V)
        y = y.masked_fill(finished, plan.pad_token_id)
        tokens[:, t], alive[:, t] = y, ~finished
        logprobs[:, t] = token_logprobs(logits, y, sampling.temperature).masked_fill(finished, 0.0)
        finished = finished | torch.isin(y, plan.eos_ids)
        steps = t + 1

        if watch is None:
            rec_ids[:, t] = y.unsqueeze(-1)
            step = SoftInputs.from_token_ids(y.unsqueeze(1))  # (b, 1, 1)
        else:
            can_mix = ~finished & ~watch.update(y)  # (b,) EOS and marker count from their step on
            gate, ids, weights, noise = _mix_step(
                plan, logits, probs, y, can_mix, table, explore_gen, plain_w
            )
            rec_ids[:, t], rec_w[:, t], eligible[:, t], mixed[:, t] = ids, weights, can_mix, gate
            if noise is not None:
                rec_noise[:, t] = noise
                noise = noise.unsqueeze(1)  # (b, 1, d)
            step = SoftInputs(ids.unsqueeze(1), weights.unsqueeze(1), noise)  # (b, 1, K)

        if t == max_new - 1 or bool(finished.all()):  # one host sync per step
            break
        x = embed(embedding, step)  # (b, 1, d) the input of response position t
        logits = _forward(model, x, attention[:, : p + t + 1], next_pos + t, cache)
        logits = logits[:, -1].float()  # (b, V)

    shift_sum = _embed_shift_sum(embedding, tokens, rec_ids, rec_w, rec_noise, mixed)
    neighbor_w = None  # Σ over mixed positions of the non-anchor candidates' total weight
    if plan.exploration is not None and plan.exploration.strategy == "neighbor":
        neighbor_w = (1.0 - rec_w[..., 0])[mixed].sum()
    return {
        "tokens": tokens, "logprobs": logprobs, "alive": alive, "rec_ids": rec_ids,
        "rec_w": rec_w, "rec_noise": rec_noise, "mixed": mixed, "eligible": eligible,
        "shift_sum": shift_sum, "neighbor_w": neighbor_w, "finished": finished, "steps": steps,
    }  # fmt: skip


def _embed_shift_sum(embedding, tokens, rec_ids, rec_w, rec_noise, mixed) -> torch.Tensor:
    """Σ over mixed positions of ‖ẽ − e(y)‖ / ‖e(y)‖ (computed once, after the loop)."""
    noise = None if rec_noise is None else rec_noise[mixed].unsqueeze(0)
    soft = embed(
        embedding, SoftInputs(rec_ids[mixed].unsqueeze(0), rec_w[mixed].unsqueeze(0), noise)
    )
    hard = embedding(tokens[mixed].unsqueeze(0))  # (1, M, d)
    return ((soft - hard).norm(dim=-1) / hard.norm(dim=-1).clamp_min(1e-12)).float().sum()


def neighbor_search_table(model, which: str) -> torch.nn.Module:
    """The module whose weight (V, d) neighbours are searched in: `input` = the input embedding,
    `output` = the output projection (`get_output_embeddings()`, the authors' release). The
    mixture is always built from input-embedding rows, so the output table must have one row per
    input-embedding row."""
    embedding = input_embeddings(model)
    if which == "input":
        return embedding
    getter = getattr(model, "get_output_embeddings", None)
    output = getter() if callable(getter) else None
    if output is None or getattr(output, "weight", None) is None:
        raise NgrpoError(
            "exploration.neighbor_table=output: the model has no output embeddings "
            "(get_output_embeddings() is None); use neighbor_table=input"
        )
    rows_in, rows_out = embedding_table(embedding).shape[0], output.weight.shape[0]
    if rows_in != rows_out:
        raise NgrpoError(
            f"exploration.neighbor_table=output: the output projection has {rows_out} rows but "
            f"the input embedding has {rows_in}; neighbours must index the same vocabulary "
            "(use neighbor_table=input)"
        )
    return output


def _make_plan(
    sampling, embedding, eos_token_id, pad_token_id, explore, answer_start_ids, neighbor_index,
    search=None,
) -> _Plan:
    """Check the exploration settings against the model and resolve marker, index, record width."""
    table = embedding_table(embedding)
    device = table.device
    eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    eos_ids = torch.tensor(eos, dtype=torch.long, device=device)
    if explore is None:
        return _Plan(sampling, eos_ids, pad_token_id, None, None, None, 1)
    explore.validate(vocab_size=table.shape[0])
    if not answer_start_ids:
        raise NgrpoError(
            "mixing needs the tokenised answer marker: pass answer_start_ids="
            "ngrpo.exploration.answer_start_ids(tokenizer, exploration.answer_start) (non-empty)"
        )
    marker = torch.tensor(answer_start_ids, dtype=torch.long, device=device)  # (M,)
    k, index = explore.mix_top_k, None
    if explore.strategy == "neighbor" and k > 1:
        search = embedding if search is None else search
        index = neighbor_index
        if index is None:
            index = NeighborIndex(search, k - 1, explore.metric)
        if index.k < k - 1 or index.metric != explore.metric:
            raise NgrpoError(
                f"neighbor_index has k={index.k}, metric={index.metric!r}; the exploration "
                f"config needs k>={k - 1}, metric={explore.metric!r}"
            )
        if index.table().data_ptr() != embedding_table(search).data_ptr():
            raise NgrpoError(
                "neighbor_index searches a different table than exploration.neighbor_table="
                f"{explore.neighbor_table!r}; build it on ngrpo.rollout.neighbor_search_table"
            )
    return _Plan(sampling, eos_ids, pad_token_id, explore, marker, index, k)


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
) -> RolloutBatch:
    """Sample `sampling.n` responses for each prompt (token-id lists); see the module docstring.

    Mixing happens only when `training` is true and `exploration.strategy != "none"`; then
    `answer_start_ids` (see `ngrpo.exploration.answer_start_ids`) is required. `eos_token_id=[]`
    disables early stopping (fixed-length generation, used by the benchmark). `batch_size` splits
    the N = len(prompts) * n rows into sequential chunks (the generators carry over). Pass a
    long-lived `neighbor_index` to keep its cache warm across calls (it refreshes itself after
    optimizer steps).
    """
    sampling.validate()
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
    plan = _make_plan(
        sampling, embedding, eos_token_id, pad_token_id, explore, answer_start_ids, neighbor_index,
        search,
    )

    rows = [p for p in prompts for _ in range(sampling.n)]
    prompt_ids, prompt_mask = left_pad(rows, pad_token_id, device)  # (N, P)
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
                    model, embedding, prompt_ids[i : i + chunk], prompt_mask[i : i + chunk], plan,
                    gen, explore_gen,
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
    tokens = int(response_mask.sum())
    stats = {
        "rollout/tokens": float(tokens),
        "rollout/response_len": tokens / response_mask.shape[0],
        "rollout/truncated_frac": float((~finished).float().mean()),
        "rollout/mixed_tokens": float(n_mixed),
        "rollout/mixed_frac": n_mixed / n_eligible if n_eligible else 0.0,
        "rollout/embed_shift": shift / n_mixed if n_mixed else 0.0,
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


# ---------------------------------------------------------------------------------------- replay


def replay_logits(
    model, batch: RolloutBatch, embedding=None, detach_mixed: bool = False
) -> torch.Tensor:
    """Full-sequence forward over the recorded soft inputs: logits (N, T, V) scoring each response
    token (position P − 1 + t predicts response token t). Runs with gradients if enabled.

    `embedding`: the input-embedding module, when `model` is a data-parallel wrapper that does not
    expose it (the learner passes the unwrapped model's). `detach_mixed`: the candidate rows of
    mixed positions (`batch.mixed`) get no gradient (`train.soft_input_grad: none`)."""
    embedding = input_embeddings(model) if embedding is None else embedding
    mask = batch.attention_mask  # (N, P + T)
    detach = None
    if detach_mixed and batch.mixed is not None:
        prompt = torch.zeros_like(batch.prompt_ids, dtype=torch.bool)  # (N, P)
        detach = torch.cat([prompt, batch.mixed.to(prompt.device)], dim=1)  # (N, P + T)
    inputs = embed(embedding, batch.soft_inputs.to(mask.device), detach)  # (N, P + T, d)
    logits = _forward(model, inputs, mask, position_ids_from_mask(mask))  # (N, P + T, V)
    p, t = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
    return logits[:, p - 1 : p + t - 1]  # (N, T, V)


def replay_logprobs(model, batch: RolloutBatch, temperature: float) -> torch.Tensor:
    """Log-probabilities (N, T) of the sampled tokens recomputed from the recorded inputs; 0 on
    response padding. Equals `batch.logprobs` before any update (the replay invariant)."""
    logits = replay_logits(model, batch)  # (N, T, V)
    logp = token_logprobs(logits, batch.response_ids, temperature)  # (N, T)
    return logp.masked_fill(batch.response_mask == 0, 0.0)
