"""`ngrpo bench rollout --preset NAME`: the rollout engine at a model's real shape, random weights.

For each response length L and strategy the engine generates `rows` × L tokens at fixed length (no
EOS; mixing forced at `mix_rate` for strategies other than `none`) after a short warm-up run, and
reports the median over `repeats` of:
- `ms_per_step`: (wall time − CUDA-graph capture time) / L; the capture (once per batch size and
  length bucket, reused only within one `generate` call) is reported as `graph_capture_s`, and
  `ms_per_step_with_capture` includes it;
- `tokens_per_s`: rows × L over the same time;
- `roofline_fraction`: the memory roofline time of a step over the measured one. The roofline reads
  the weights except the input-embedding table (a step gathers only the rows it feeds) and the
  keys and values of every position so far (prompt + t, averaged over the L steps), at the
  device's *measured* copy bandwidth (a large device-to-device copy: bytes read + written / s).

With `eos_rate` > 0 a second section runs a batch with very different response lengths: a fraction
`eos_rate` of the vocabulary counts as EOS, so under the near-uniform random policy responses stop
with hazard ≈ `eos_rate` per step (geometric lengths, capped at the longest L), once with finished
rows compacted out of the batch and once without; both sample the same tokens. With CUDA graphs
the compacted run captures more graphs (one per batch size reached): `speedup` includes that
capture time, `speedup_without_capture` does not.

On CPU, `hf_generate_static` (transformers `generate` with a static cache, not compiled) runs on the
same batch at every length, as the reference the engine is compared with.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from ngrpo.bench.timing import sync_device
from ngrpo.rollout import EngineOptions, RolloutBatch, SamplingParams, generate

PAD = 0


def copy_bandwidth(device: torch.device, nbytes: int | None = None, repeats: int = 5) -> float:
    """Bytes per second of a large device-to-device copy (read + write), median of `repeats`."""
    nbytes = nbytes or (1 << 30 if device.type == "cuda" else 1 << 25)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up
    times = []
    for _ in range(repeats):
        sync_device(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync_device(device)
        times.append(time.perf_counter() - start)
    return 2 * src.numel() * 4 / statistics.median(times)


def step_bytes(model, rows: int, context: float) -> dict[str, float]:
    """Bytes one decoding step reads at the memory roofline: weights (without the input-embedding
    table) and the keys and values of `context` positions for each of `rows` rows."""
    embedding = model.get_input_embeddings().weight
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    weights -= embedding.numel() * embedding.element_size()
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_position = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim
    kv = rows * context * per_position * embedding.element_size()
    return {"weights": float(weights), "kv": float(kv)}


def _prompts(vocab: int, rows: int, prompt_tokens: int, low: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(low, vocab, (rows, prompt_tokens), generator=gen).tolist()


def _engine_run(model, prompts, strategy, new_tokens, mix_rate, eos, engine=None):
    from ngrpo.method.exploration import ExplorationConfig

    vocab = model.get_input_embeddings().weight.shape[0]
    exploration = ExplorationConfig(strategy=strategy, mix_top_k=2, mix_rate=mix_rate)
    return generate(
        model, prompts, SamplingParams(n=1, max_new_tokens=new_tokens), eos_token_id=eos,
        pad_token_id=PAD, exploration=exploration, answer_start_ids=[vocab - 1], training=True,
        engine=engine,
    )  # fmt: skip


def _timed_batch(run: Callable[[], object], device: torch.device):
    sync_device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    batch = run()
    sync_device(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    if isinstance(batch, RolloutBatch):
        batch.stats["bench/cpu_seconds"] = time.process_time() - cpu_start
    return time.perf_counter() - start, batch, peak


def _fixed_length(
    model, prompts, strategy, length, repeats, mix_rate, bandwidth, device, engine=None
) -> dict:
    runs = []
    for _ in range(repeats):
        seconds, batch, peak = _timed_batch(
            lambda: _engine_run(model, prompts, strategy, length, mix_rate, [], engine), device
        )
        runs.append((seconds, batch.stats["rollout/graph_capture_s"], peak))
    seconds = statistics.median(r[0] for r in runs)
    capture = statistics.median(r[1] for r in runs)
    rows, width = len(prompts), len(prompts[0])
    bytes_ = step_bytes(model, rows, width + (length - 1) / 2)  # average context over the run
    ms = 1000 * (seconds - capture) / length
    roofline_ms = 1000 * (bytes_["weights"] + bytes_["kv"]) / bandwidth
    return {
        "ms_per_step": ms,
        "ms_per_step_with_capture": 1000 * seconds / length,
        "tokens_per_s": rows * length / (seconds - capture),
        "graph_capture_s": capture,
        "roofline_ms_per_step": roofline_ms,
        "roofline_fraction": roofline_ms / ms,
        "weights_gb": bytes_["weights"] / 1e9,
        "kv_read_gb_per_step": bytes_["kv"] / 1e9,
        "peak_gb": peak,
        "seconds": [r[0] for r in runs],
    }


def _hf_static(model, prompts, length, repeats, device) -> dict:
    from ngrpo.bench.rollout import hf_generate_runner

    run = hf_generate_runner(model, prompts, new_tokens=length, pad_token_id=PAD, static=True)
    run()  # warm-up
    seconds = statistics.median(_timed_batch(run, device)[0] for _ in range(repeats))
    return {"ms_per_step": 1000 * seconds / length, "tokens_per_s": len(prompts) * length / seconds}


def _varied_lengths(model, prompts, length, eos_rate, device, cuda_graphs="auto") -> dict:
    """The same batch with and without compaction; responses stop with hazard ≈ eos_rate."""
    vocab = model.get_input_embeddings().weight.shape[0]
    eos = list(range(2, 2 + max(1, round(eos_rate * vocab))))
    out = {}
    for name, compact in (("compact", True), ("no_compact", False)):
        engine = EngineOptions(cuda_graphs=cuda_graphs, compact=compact)
        _engine_run(model, prompts, "none", 8, 0.0, eos, engine)  # warm-up
        seconds, batch, peak = _timed_batch(
            lambda engine=engine: _engine_run(model, prompts, "none", length, 0.0, eos, engine),
            device,
        )
        lengths = batch.response_mask.sum(-1).float()  # (N,)
        capture = batch.stats["rollout/graph_capture_s"]
        out[name] = {
            "seconds": seconds,
            "cpu_seconds": batch.stats["bench/cpu_seconds"],  # this process's CPU time
            "graph_capture_s": capture,
            "response_tokens": int(lengths.sum()),
            "tokens_per_s": float(lengths.sum()) / seconds,
            "tokens_per_s_without_capture": float(lengths.sum()) / (seconds - capture),
            "decoded_rows_per_step": batch.stats["rollout/decoded_rows"],
            "steps": batch.response_ids.shape[1],
            "peak_gb": peak,
        }
        out["response_length"] = {
            "min": int(lengths.min()), "median": float(lengths.median()),
            "max": int(lengths.max()), "mean": float(lengths.mean()),
        }  # fmt: skip
    out["eos_rate"] = eos_rate
    out["speedup"] = out["no_compact"]["seconds"] / out["compact"]["seconds"]
    out["speedup_without_capture"] = (
        out["compact"]["tokens_per_s_without_capture"]
        / out["no_compact"]["tokens_per_s_without_capture"]
    )
    return out


def scale_report(
    model,
    *,
    rows: int,
    prompt_tokens: int,
    lengths: list[int],
    strategies: tuple[str, ...] = ("none", "neighbor"),
    repeats: int = 1,
    mix_rate: float = 0.1,
    eos_rate: float = 0.0,
    hf_baseline: bool | None = None,
    progress: Callable[[str], None] | None = None,
    checkpoint: Callable[[dict], None] | None = None,
    engine: EngineOptions | None = None,
) -> dict:
    """The `ngrpo bench rollout --preset` JSON (see the module docstring); `checkpoint` receives
    the report after every measurement, so a run cut short still leaves its numbers. `engine`:
    the decoder options (default: `EngineOptions()`, CUDA graphs on CUDA)."""
    say = progress or (lambda _: None)
    save = checkpoint or (lambda _: None)
    param = next(model.parameters())
    device = param.device
    hf_baseline = device.type == "cpu" if hf_baseline is None else hf_baseline
    vocab = model.get_input_embeddings().weight.shape[0]
    prompts = _prompts(vocab, rows, prompt_tokens, low=2 + max(1, round(eos_rate * vocab)))
    say("copy bandwidth")
    bandwidth = copy_bandwidth(device)
    report = {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "dtype": str(param.dtype).removeprefix("torch."),
        "params": sum(p.numel() for p in model.parameters()),
        "rows": rows,
        "prompt_tokens": prompt_tokens,
        "mix_rate": mix_rate,
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "lengths": {},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda_graphs": (engine or EngineOptions()).cuda_graphs,
    }
    for strategy in strategies:  # warm-up: kernels, allocator, first graphs
        say(f"warm-up {strategy}")
        _engine_run(model, prompts, strategy, 16, mix_rate, [], engine)
    save(report)
    for length in lengths:
        entry = report["lengths"][str(length)] = {}
        for strategy in strategies:
            say(f"{length} tokens: engine {strategy}")
            entry[strategy] = _fixed_length(
                model, prompts, strategy, length, repeats, mix_rate, bandwidth, device, engine
            )
            save(report)
        if hf_baseline:
            say(f"{length} tokens: hf_generate_static")
            entry["hf_generate_static"] = _hf_static(model, prompts, length, repeats, device)
            if "none" in entry:
                entry["none_over_hf_generate_static"] = (
                    entry["none"]["tokens_per_s"] / entry["hf_generate_static"]["tokens_per_s"]
                )
            save(report)
    if len(lengths) > 1 and "none" in strategies:
        first, last = report["lengths"][str(lengths[0])], report["lengths"][str(lengths[-1])]
        report["ms_per_step_longest_over_shortest"] = (
            last["none"]["ms_per_step"] / first["none"]["ms_per_step"]
        )
    if eos_rate > 0:
        say(f"varied lengths (eos rate {eos_rate})")
        report["varied_lengths"] = _varied_lengths(
            model, prompts, max(lengths), eos_rate, device, (engine or EngineOptions()).cuda_graphs
        )
        save(report)
    return report
