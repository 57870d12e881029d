"""`ngrpo bench learner`: the learner's cost, in two measurements (plain functions returning
JSON-ready dicts).

**Soft inputs vs token ids** (`learner_report`, on a model directory): one forward + backward of the
next-token log-likelihood over B × L tokens, fed either as token ids or as soft-input records
padded to K candidates (a `mix_rate` fraction of positions mixing a token with its nearest
neighbours, as N-GRPO records them) through `embed`; the difference is the cost of the
(B, L, K, d) gather and weighted sum, and of the embedding-gradient scatter into K rows per
position.

**One update at a real shape** (`learner_scale_report`, random weights, no hub): an update is
`ngrpo.learner.update.update_policy` on synthetic rollouts (R rows of P prompt tokens and T response
tokens, soft-input records padded to K candidates with a `mix_rate` fraction mixed with nearest
neighbours, as N-GRPO records them), one mini-batch, gradient clipping and one SGD step at learning
rate 0 (the weights stay put, so every repeat does the same work; no optimizer state). Variants name
how the update is run: `+`-joined parts, e.g. `full+mb1` (today's: full logits, one row per
micro-batch), `chunked+mb1`, `chunked+tok16896` (token budget), `chunked+mb1+ckpt` (gradient
checkpointing of the body).

Measured per variant (after one warm-up update, which also allocates gradients and optimizer
state, so that what follows is the steady state of training):
- seconds per update (median of repeats) and tokens/s (R·(P + T) / seconds);
- `peak_bytes`: the most memory held during an update, everything included (CUDA:
  `torch.cuda.max_memory_allocated`; CPU: the kernel's peak resident set, VmHWM, reset before
  each update by writing 5 to /proc/self/clear_refs: exact, no sampling; glibc is told to map
  every block from 128 KiB up on its own so that the resident set follows live tensors rather
  than malloc's cache of freed ones: `ngrpo.memory.usage.PeakMemory`);
- `peak_extra_bytes`: `peak_bytes` minus what was held just before the update (weights,
  gradients, optimizer state), i.e. what the forward + backward + step themselves add;
- `bf16_peak_fraction` (CUDA): 6 · parameters · tokens / seconds over the device's bf16 matmul
  peak measured here (median of a few 8192³ matmuls), so it is relative to what this device really
  sustains, not to a datasheet.
`memory.logits_fp32_bytes` is one fp32 (T, V) logits tensor (one row's response logits): the unit
the learner's memory target is stated in.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ngrpo.bench.timing import sync_device, timed
from ngrpo.learner.scoring import default_chunk_elements
from ngrpo.learner.update import LearnerParams, update_policy
from ngrpo.memory.usage import PeakMemory
from ngrpo.method.neighbors import bruteforce_neighbors
from ngrpo.method.soft_inputs import SoftInputs, embed
from ngrpo.rollout import RolloutBatch
from ngrpo.utils.errors import NgrpoError

VOCAB_SHAPE = dict(
    hidden_size=512, intermediate_size=1_536, num_hidden_layers=2, num_attention_heads=8,
    num_key_value_heads=2, tie_word_embeddings=False,
)  # fmt: skip
"""`--vocab V`: a small Qwen2 body (d 512, 2 layers) under a vocabulary of V, untied as R1."""


@dataclass(frozen=True)
class Variant:
    """How one update is run (parsed from e.g. `chunked+tok16896+ckpt`)."""

    name: str
    chunked: bool = True
    micro_batch_size: int = 1
    max_tokens: int | None = None
    checkpointing: bool = False
    chunk_elements: int | None = None  # None: the report's


def parse_variant(text: str) -> Variant:
    """`full|chunked` + optional `mb<N>` (rows per micro-batch) or `tok<N>` (token budget),
    `ckpt` (gradient checkpointing), `ce<N>` (logits elements per head chunk); an `NgrpoError`
    naming the bad part otherwise."""
    parts = [p for p in text.strip().split("+") if p]
    if not parts or parts[0] not in ("full", "chunked"):
        raise NgrpoError(f"--variants: {text!r} must start with full or chunked "
                         "(e.g. chunked+mb1, full+mb1, chunked+tok16896+ckpt)")  # fmt: skip
    fields: dict = {"chunked": parts[0] == "chunked"}
    for part in parts[1:]:
        if part == "ckpt":
            fields["checkpointing"] = True
        elif part.startswith("mb") and part[2:].isdigit() and int(part[2:]) >= 1:
            fields["micro_batch_size"] = int(part[2:])
        elif part.startswith("tok") and part[3:].isdigit() and int(part[3:]) >= 1:
            fields["max_tokens"] = int(part[3:])
        elif part.startswith("ce") and part[2:].isdigit() and int(part[2:]) >= 1:
            fields["chunk_elements"] = int(part[2:])
        else:
            raise NgrpoError(
                f"--variants: unknown part {part!r} in {text!r} (mb<N>, tok<N>, ckpt, ce<N>)"
            )
    return Variant(name=text.strip(), **fields)


# ------------------------------------------------------------------- soft inputs vs token ids


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
            seconds[name].append(timed(run, device)[0])
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


# ------------------------------------------------------------------ one update at a real shape


def vocab_model(vocab: int, device: str | torch.device = "cpu", dtype=torch.float32, seed=0):
    """A random `Qwen2ForCausalLM` of `VOCAB_SHAPE` with vocabulary `vocab`."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=vocab, max_position_embeddings=131_072, pad_token_id=0,
                         eos_token_id=1, **VOCAB_SHAPE)  # fmt: skip
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    return model.to(dtype)


def synthetic_rollouts(
    model, rows: int, prompt_tokens: int, length: int, *, k: int = 3, mix_rate: float = 0.1,
    seed: int = 0,
) -> RolloutBatch:  # fmt: skip
    """R rows of random prompt and response tokens, full length, with N-GRPO-style soft inputs;
    π_old is log(1/V) everywhere (its value changes no cost)."""
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().weight.shape[0]
    ids, soft = learner_inputs(model, rows, prompt_tokens + length, k=k, mix_rate=mix_rate,
                               seed=seed)  # fmt: skip
    ones = torch.ones(rows, prompt_tokens + length, dtype=torch.long)
    return RolloutBatch(
        prompt_ids=ids[:, :prompt_tokens].to(device),
        prompt_mask=ones[:, :prompt_tokens].to(device),
        response_ids=ids[:, prompt_tokens:].to(device),
        response_mask=ones[:, prompt_tokens:].to(device),
        logprobs=torch.full((rows, length), -math.log(vocab), device=device),
        soft_inputs=soft.to(device), mixed=torch.zeros(rows, length, dtype=torch.bool,
                                                       device=device),
        stats={}, prompt_index=torch.zeros(rows, dtype=torch.long, device=device),
    )  # fmt: skip


class _KeepGrads(torch.optim.SGD):
    """Plain SGD (at learning rate 0: a step that allocates nothing) whose `zero_grad` zeroes
    gradients in place instead of freeing them, so every timed update starts with gradients
    allocated, as from the second micro-batch of a mini-batch on. Optimizer state (AdamW: 2× the
    weights) is a fixed cost of training, not of the learner's design, and is left out."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none=False)


def bf16_matmul_peak(device: torch.device, n: int = 8192, repeats: int = 5) -> float | None:
    """Measured bf16 matmul FLOP/s on CUDA (median of `repeats` n³ products), None elsewhere."""
    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) / 10)
    return 2 * n**3 / statistics.median(times)


# ---------------------------------------------------------------------------------- report


def _set_checkpointing(model, on: bool, was: bool) -> bool:
    """Gradient checkpointing of the body on or off, called only on a change
    (`ngrpo.models.load.set_activation_checkpointing`). Returns `on`."""
    from ngrpo.models.load import set_activation_checkpointing

    if on != was:
        set_activation_checkpointing(model, on)
    return on


def learner_scale_report(
    model,
    *,
    rows: int = 4,
    prompt_tokens: int = 256,
    length: int = 8192,
    variants: list[Variant] | None = None,
    repeats: int = 2,
    k: int = 3,
    mix_rate: float = 0.1,
    chunk_elements: int | None = None,
    progress: Callable[[str], None] | None = None,
    checkpoint: Callable[[dict], None] | None = None,
) -> dict:
    """The `ngrpo bench learner` JSON (see the module docstring). `checkpoint` receives the
    partial report after every variant (so a run cut short still leaves its numbers)."""
    say = progress or (lambda _: None)
    variants = variants or [parse_variant("chunked+mb1")]
    device = next(model.parameters()).device
    chunk_elements = chunk_elements or default_chunk_elements(device)
    model.train()
    vocab = model.get_input_embeddings().weight.shape[0]
    batch = synthetic_rollouts(model, rows, prompt_tokens, length, k=k, mix_rate=mix_rate)
    advantages = torch.linspace(-1, 1, rows, device=device)  # (R,)
    optimizer = _KeepGrads(model.parameters(), lr=0.0)
    memory = PeakMemory(device)
    n_params = sum(p.numel() for p in model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    tokens = rows * (prompt_tokens + length)
    say("measuring the bf16 matmul peak" if device.type == "cuda" else "no FLOP peak on CPU")
    peak_flops = bf16_matmul_peak(device)
    report: dict = {
        "rows": rows, "prompt_tokens": prompt_tokens, "length": length,
        "tokens_per_update": tokens, "vocab": vocab, "parameters": n_params,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "k": k,
        "mix_rate": mix_rate, "chunk_elements": chunk_elements, "repeats": repeats,
        "bf16_matmul_peak_flops": peak_flops,
        "memory": {
            "logits_fp32_bytes": length * vocab * 4,
            "param_bytes": param_bytes, "method": memory.method,
        },
        "variants": {},
    }  # fmt: skip
    checkpointing = False  # a fresh model: off
    for variant in variants:
        params = LearnerParams(
            group_size=rows, mini_batch_groups=1, micro_batch_size=variant.micro_batch_size,
            max_tokens_per_micro_batch=variant.max_tokens,
            chunk_elements=variant.chunk_elements or chunk_elements,
            full_logits=not variant.chunked,
        )  # fmt: skip
        checkpointing = _set_checkpointing(model, variant.checkpointing, checkpointing)
        entry = None
        with contextlib.suppress(torch.OutOfMemoryError):  # recorded; the next variants run
            entry = _time_variant(
                model,
                optimizer,
                batch,
                advantages,
                params,
                memory,
                repeats,
                lambda i, name=variant.name: say(f"{name}: update {i}"),
            )
        if entry is None:  # out of memory; the traceback (holding tensors) is gone here
            optimizer.zero_grad()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            report["variants"][variant.name] = {"error": "out of memory"}
            say(f"{variant.name}: out of memory")
            if checkpoint is not None:
                checkpoint(report)
            continue
        entry["tokens_per_s"] = tokens / entry["seconds_per_update"]
        entry["peak_extra_over_logits"] = (
            entry["peak_extra_bytes"] / report["memory"]["logits_fp32_bytes"]
        )
        if peak_flops is not None:
            entry["bf16_peak_fraction"] = (
                6 * n_params * tokens / entry["seconds_per_update"] / peak_flops
            )
        report["variants"][variant.name] = entry
        say(f"{variant.name}: {entry['seconds_per_update']:.3f} s/update, "
            f"{entry['tokens_per_s']:,.0f} tokens/s, peak {entry['peak_bytes'] / 2**30:.2f} GiB "
            f"(+{entry['peak_extra_bytes'] / 2**30:.2f} GiB)")  # fmt: skip
        if checkpoint is not None:
            checkpoint(report)
    _set_checkpointing(model, False, checkpointing)
    first = report["variants"][variants[0].name]
    report["memory"]["peak_extra_bytes"] = first.get("peak_extra_bytes")
    report["memory"]["peak_bytes"] = first.get("peak_bytes")
    report["memory"]["grad_bytes"] = param_bytes  # held before each update (see _KeepGrads)
    return report


def _time_variant(model, optimizer, batch, advantages, params, memory, repeats, say) -> dict:
    """One warm-up update, then `repeats` timed ones: median seconds, peak and extra bytes."""
    device = memory.device

    def update() -> None:
        update_policy(model, optimizer, None, batch, advantages, params)

    say("warm-up")
    update()
    seconds, peaks, extras = [], [], []
    for repeat in range(repeats):
        say(f"{repeat + 1}/{repeats}")
        held = memory.start()
        start = time.perf_counter()
        update()
        sync_device(device)
        seconds.append(time.perf_counter() - start)
        peak = memory.peak()
        peaks.append(peak)
        extras.append(peak - held)
    return {"seconds_per_update": statistics.median(seconds), "peak_bytes": max(peaks),
            "peak_extra_bytes": max(extras)}  # fmt: skip
