"""`ngrpo bench rollout`: rollout tokens/s per strategy vs `model.generate`, and the neighbour
lookup (plain functions returning JSON-ready dicts of medians).

Rollout throughput is measured at fixed length (no early stop at EOS, so every engine does exactly
batch × new_tokens decoding steps' work) with mixing forced at `mix_rate`; `hf_generate` is
`model.generate(do_sample=True)` with the same temperature and no top-k / top-p
(`hf_generate_static`: with transformers' static KV cache, not compiled). The neighbour lookup
is timed on a random table of DeepSeek-R1-Distill-Qwen-1.5B's embedding shape: brute force
recomputes the full V×d similarity for every lookup (what the authors' code does per decoded
token); the cached index is timed after warm-up on the same anchors (its steady state: during
training the argmax anchors come from a small part of the vocabulary).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

from ngrpo.bench.timing import median_seconds, timed
from ngrpo.method.exploration import ExplorationConfig
from ngrpo.method.neighbors import NeighborIndex, bruteforce_neighbors
from ngrpo.rollout import SamplingParams, generate, left_pad


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
    brute = median_seconds(lambda: bruteforce_neighbors(table, anchors, k), repeats, device)
    lookups = 200
    cached = (
        median_seconds(lambda: [index.lookup(anchors) for _ in range(lookups)], repeats, device)
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
            wall, cpu = timed(run, device)
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
