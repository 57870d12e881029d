"""Benchmarks behind `ngrpo bench`: plain functions returning JSON-ready dicts (medians).

Rollout throughput is measured at fixed length (no early stop at EOS, so every engine does exactly
batch × new_tokens decoding steps' work) with mixing forced at `mix_rate`; `hf_generate` is
`model.generate(do_sample=True)` with the same temperature and no top-k / top-p
(`hf_generate_static`: with transformers' static KV cache, not compiled). The neighbour lookup
is timed on a random table of DeepSeek-R1-Distill-Qwen-1.5B's embedding shape: brute force
recomputes the full V×d similarity for every lookup (what the authors' code does per decoded
token); the cached index is timed after warm-up on the same anchors (its steady state: during
training the argmax anchors come from a small part of the vocabulary).

Learner throughput is one forward + backward of the next-token log-likelihood over B × L tokens,
fed either as token ids or as soft-input records padded to K candidates (a `mix_rate` fraction of
positions mixing a token with its nearest neighbours, as N-GRPO records them) through `embed`; the
difference is the cost of the (B, L, K, d) gather and weighted sum, and of the embedding-gradient
scatter into K rows per position.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from ngrpo.method.exploration import ExplorationConfig
from ngrpo.method.neighbors import NeighborIndex, bruteforce_neighbors
from ngrpo.method.soft_inputs import SoftInputs, embed
from ngrpo.rollout import SamplingParams, generate, left_pad


def sync_device(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op elsewhere. Every bench timer calls it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    sync_device(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    fn()
    sync_device(device)
    return time.perf_counter() - start, time.process_time() - cpu_start


def _median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    return statistics.median(_timed(fn, device)[0] for _ in range(repeats))


def engine_runner(
    model,
    prompts: list[list[int]],
    *,
    strategy: str,
    new_tokens: int,
    pad_token_id: int,
    answer_start_ids: list[int],
    mix_rate: float = 0.1,
    mix_top_k: int = 2,
) -> Callable[[], object]:
    """A zero-argument call of the engine at fixed length with mixing forced at `mix_rate`."""
    sampling = SamplingParams(n=1, max_new_tokens=new_tokens)
    exploration = ExplorationConfig(strategy=strategy, mix_top_k=mix_top_k, mix_rate=mix_rate)
    index = None
    if strategy == "neighbor":  # long-lived, as in training: the warm-up call fills it
        index = NeighborIndex(model.get_input_embeddings(), mix_top_k - 1, exploration.metric)

    def run():
        return generate(
            model, prompts, sampling, eos_token_id=[], pad_token_id=pad_token_id,
            exploration=exploration, answer_start_ids=answer_start_ids, training=True,
            neighbor_index=index,
        )  # fmt: skip

    return run


def hf_generate_runner(
    model, prompts: list[list[int]], *, new_tokens: int, pad_token_id: int, static: bool = False
) -> Callable[[], object]:
    """A zero-argument `model.generate(do_sample=True)` at fixed length on the same batch; with
    `static`, transformers' static KV cache (not compiled)."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_token_id, device)
    cache = {"cache_implementation": "static", "disable_compile": True} if static else {}
    config = GenerationConfig(
        do_sample=True, temperature=1.0, top_k=None, top_p=None, max_new_tokens=new_tokens,
        min_new_tokens=new_tokens, eos_token_id=None, pad_token_id=pad_token_id, **cache,
    )  # fmt: skip

    def run():
        with torch.no_grad():
            return model.generate(input_ids=ids, attention_mask=mask, generation_config=config)

    return run


def neighbor_lookup(
    vocab: int = 151_936,
    dim: int = 1_536,
    batch: int = 64,
    repeats: int = 3,
    k: int = 1,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> dict[str, float]:
    """Microseconds per looked-up token: brute force vs the warm cached index (cosine)."""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(vocab, dim, generator=gen).to(device)  # (V, d)
    anchors = torch.randint(0, vocab, (batch,), generator=gen).to(device)  # (A,)
    index = NeighborIndex(table, k, "cosine")
    index.lookup(anchors)  # warm-up: fills the cache for these anchors
    brute = _median_seconds(lambda: bruteforce_neighbors(table, anchors, k), repeats, device)
    lookups = 200
    cached = (
        _median_seconds(lambda: [index.lookup(anchors) for _ in range(lookups)], repeats, device)
        / lookups
    )
    return {
        "vocab": vocab,
        "dim": dim,
        "batch": batch,
        "cached_us_per_token": cached / batch * 1e6,
        "bruteforce_us_per_token": brute / batch * 1e6,
        "speedup": brute / cached,
    }


def rollout_report(
    model,
    prompts: list[list[int]],
    *,
    pad_token_id: int,
    answer_start_ids: list[int],
    new_tokens: int = 128,
    repeats: int = 3,
    mix_rate: float = 0.1,
    lookup_shape: tuple[int, int] = (151_936, 1_536),
    progress: Callable[[str], None] | None = None,
) -> dict:
    """The `ngrpo bench rollout` JSON: engine tokens/s per strategy, HF generate, lookup timing."""
    device = next(model.parameters()).device
    say = progress or (lambda _: None)
    runners = {
        strategy: engine_runner(
            model, prompts, strategy=strategy, new_tokens=new_tokens, pad_token_id=pad_token_id,
            answer_start_ids=answer_start_ids, mix_rate=mix_rate,
        )
        for strategy in ("none", "neighbor", "gaussian")
    }  # fmt: skip
    for name, static in (("hf_generate", False), ("hf_generate_static", True)):
        runners[name] = hf_generate_runner(
            model, prompts, new_tokens=new_tokens, pad_token_id=pad_token_id, static=static
        )
    for name, run in runners.items():  # warm-up (and fills the neighbour cache)
        say(f"warm-up {name}")
        run()
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in runners}
    for repeat in range(repeats):  # round-robin, so load changes hit every engine alike
        for name, run in runners.items():
            say(f"repeat {repeat + 1}/{repeats}: {name}")
            wall, cpu = _timed(run, device)
            seconds[name].append(wall)
            cpu_seconds[name].append(cpu)
    tokens = len(prompts) * new_tokens
    tokens_per_s = {name: tokens / statistics.median(ts) for name, ts in seconds.items()}
    best = {name: tokens / min(ts) for name, ts in seconds.items()}
    # Tokens per second of this process's CPU time: on a shared CPU machine (other processes
    # competing for the cores) this is the stable comparison; with --threads 1 it is compute time.
    per_cpu_s = {name: tokens / statistics.median(ts) for name, ts in cpu_seconds.items()}
    say("neighbour lookup")
    lookup = neighbor_lookup(*lookup_shape, batch=len(prompts), repeats=repeats, device=device)
    return {
        "tokens_per_s": tokens_per_s,
        "ratios": {
            "neighbor_over_none": tokens_per_s["neighbor"] / tokens_per_s["none"],
            "none_over_hf_generate": tokens_per_s["none"] / tokens_per_s["hf_generate"],
            "none_over_hf_generate_static": (
                tokens_per_s["none"] / tokens_per_s["hf_generate_static"]
            ),
            "neighbor_over_none_cpu": per_cpu_s["neighbor"] / per_cpu_s["none"],
            "none_over_hf_generate_cpu": per_cpu_s["none"] / per_cpu_s["hf_generate"],
            "none_over_hf_generate_static_cpu": (
                per_cpu_s["none"] / per_cpu_s["hf_generate_static"]
            ),
            "lookup_speedup": lookup["speedup"],
        },
        "tokens_per_s_best": best,
        "tokens_per_cpu_s": per_cpu_s,
        "neighbor_lookup": lookup,
        "batch": len(prompts),
        "new_tokens": new_tokens,
        "mix_rate": mix_rate,
        "fixed_length": True,
        "repeats": repeats,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


# ------------------------------------------------------------------------------------ learner


def learner_inputs(
    model, batch: int, length: int, *, k: int = 3, mix_rate: float = 0.1, seed: int = 0
) -> tuple[torch.LongTensor, SoftInputs]:
    """Random token ids (B, L) and their soft-input records (B, L, K) as N-GRPO produces them:
    every position padded to K slots, a `mix_rate` fraction mixing the token with its K − 1
    nearest embedding neighbours (cosine) under random weights."""
    table = model.get_input_embeddings().weight.detach()  # (V, d)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, table.shape[0], (batch, length), generator=gen)  # (B, L)
    soft = SoftInputs.from_token_ids(ids, k)  # (B, L, K) plain records
    mixed = torch.rand(batch, length, generator=gen) < mix_rate  # (B, L)
    if k > 1 and mixed.any():
        neighbors = bruteforce_neighbors(table, ids[mixed].to(table.device), k - 1)[0].cpu()
        weights = torch.randn(int(mixed.sum()), k, generator=gen).softmax(-1)  # (M, K)
        soft.ids[mixed] = torch.cat([ids[mixed, None], neighbors], dim=-1)
        soft.weights[mixed] = weights
    return ids, soft


def learner_runner(model, ids: torch.LongTensor, soft: SoftInputs | None) -> Callable[[], None]:
    """One forward + backward of the next-token log-likelihood over ids (B, L), fed as token ids
    (`soft=None`) or as the soft-input records (the learner's path: `embed` + `inputs_embeds`)."""
    device = next(model.parameters()).device
    ids = ids.to(device)
    mask = torch.ones_like(ids)  # (B, L)
    soft = None if soft is None else soft.to(device)
    embedding = model.get_input_embeddings()

    def run() -> None:
        model.zero_grad(set_to_none=True)
        if soft is None:
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        else:
            inputs = embed(embedding, soft)  # (B, L, d)
            logits = model(inputs_embeds=inputs, attention_mask=mask, use_cache=False).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, L - 1, V)
        loss = -logp.gather(-1, ids[:, 1:, None]).mean()
        loss.backward()

    return run


def learner_report(
    model,
    *,
    batch: int = 32,
    length: int = 64,
    repeats: int = 3,
    k: int = 3,
    mix_rate: float = 0.1,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """The `ngrpo bench learner` JSON: forward + backward tokens/s, token ids vs soft inputs."""
    device = next(model.parameters()).device
    say = progress or (lambda _: None)
    model.train()
    ids, soft = learner_inputs(model, batch, length, k=k, mix_rate=mix_rate)
    runners = {
        "token_ids": learner_runner(model, ids, None),
        "soft_inputs": learner_runner(model, ids, soft),
    }
    for name, run in runners.items():
        say(f"warm-up {name}")
        run()
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for repeat in range(repeats):  # round-robin, as for the rollout benchmark
        for name, run in runners.items():
            say(f"repeat {repeat + 1}/{repeats}: {name}")
            seconds[name].append(_timed(run, device)[0])
    model.zero_grad(set_to_none=True)
    tokens = batch * length
    tokens_per_s = {name: tokens / statistics.median(ts) for name, ts in seconds.items()}
    return {
        "tokens_per_s": tokens_per_s,
        "soft_over_token_ids": tokens_per_s["soft_inputs"] / tokens_per_s["token_ids"],
        "tokens_per_s_best": {name: tokens / min(ts) for name, ts in seconds.items()},
        "batch": batch,
        "length": length,
        "k": k,
        "mix_rate": mix_rate,
        "repeats": repeats,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
