"""Peak memory of one steady-state learner update on CPU, in a fresh process (run by
tests/test_memory.py; prints one JSON line).

    python tests/memory_check.py '{"model": "base" | {shape...}, "rows": 8, "prompt": 16,
                                   "length": 48, "micro": 4, "ckpt": false, "beta": 0.0}'

What is measured: the process's peak resident set (VmHWM, reset by /proc/self/clear_refs) during
the second `update_policy` call (the first one allocates AdamW's moments and the gradients, as in
training from the second step on), minus the resident set of the process before the model was
built (Python, torch and transformers loaded, their thread pools warmed up by a throw-away
forward + backward). glibc maps every block from 128 KiB up on its own, so the resident set
follows the live tensors (`ngrpo.memory.usage.PeakMemory`).
"""

from __future__ import annotations

import gc
import json
import sys

import torch


def _model(spec):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from ngrpo.models.load import load_model, resolve_model_path

    if spec == "base":
        return load_model(resolve_model_path("base"), torch.device("cpu"), torch.float32)
    torch.manual_seed(0)
    config = Qwen2Config(**spec, max_position_embeddings=4096, pad_token_id=0, eos_token_id=1)
    return Qwen2ForCausalLM(config)


def _warm_up(accelerator, spec, ckpt: bool) -> None:
    """A throw-away update of a small model down the measured path (the model loader, gradient
    checkpointing when measured, the accelerate-prepared policy module, AdamW): thread pools,
    kernel caches and lazy imports are paid for before the baseline is read (a fresh virtual
    environment imports ~14 MB more lazily than a used one otherwise)."""
    from ngrpo.bench.learner import synthetic_rollouts
    from ngrpo.learner.policy import SoftInputPolicy
    from ngrpo.learner.update import LearnerParams, update_policy

    if spec == "base":  # the loader's lazy imports (the model itself is small, and freed)
        _model(spec)
    model = _model(dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1))  # fmt: skip
    if ckpt:
        model.gradient_checkpointing_enable()
    model.train()
    batch = synthetic_rollouts(model, 2, 4, 8)
    params = LearnerParams(group_size=2, mini_batch_groups=1, micro_batch_size=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    wrapped, optimizer = accelerator.prepare(SoftInputPolicy(model), optimizer)
    update_policy(wrapped, optimizer, None, batch, torch.tensor([1.0, -1.0]), params,
                  ref_model=model, accelerator=accelerator)  # fmt: skip
    accelerator.free_memory()  # drops accelerate's references to the throw-away objects
    del model, batch, optimizer, wrapped
    gc.collect()


def _rollout(model, args: dict) -> None:
    """Fixed-length sampling of `rows` rows (`n` per prompt) with the static decoder."""
    from ngrpo.rollout import SamplingParams, generate

    prompts = [[2 + (i + j) % 50 for j in range(args["prompt"])]
               for i in range(args["rows"] // args["n"])]  # fmt: skip
    generate(model, prompts, SamplingParams(n=args["n"], max_new_tokens=args["length"]),
             eos_token_id=[], pad_token_id=0)  # fmt: skip


def main(argv: list[str]) -> dict:
    from accelerate import Accelerator

    from ngrpo.bench.learner import synthetic_rollouts
    from ngrpo.learner.policy import SoftInputPolicy
    from ngrpo.learner.update import LearnerParams, update_policy
    from ngrpo.memory.usage import PeakMemory
    from ngrpo.models.load import disable_dropout

    args = json.loads(argv[0])
    torch.set_num_threads(1)
    memory = PeakMemory(torch.device("cpu"))  # glibc mmap threshold from here on
    bf16 = args.get("dtype", "float32") == "bfloat16"  # the trainer's path: accelerate autocast
    accelerator = Accelerator(cpu=True, mixed_precision="bf16" if bf16 else "no")
    _warm_up(accelerator, args["model"], args.get("ckpt", False))
    baseline = memory.start()
    model = _model(args["model"])
    parameters = sum(p.numel() for p in model.parameters())
    if args.get("phase") == "rollout":  # fp32 weights only (no gradients, no optimizer)
        with accelerator.autocast():
            _rollout(model, args)  # warm-up (allocator, lazy initialisation)
            memory.start()
            _rollout(model, args)
        return {"peak_bytes": memory.peak() - baseline, "parameters": parameters}
    if args.get("ckpt"):
        model.gradient_checkpointing_enable()
    disable_dropout(model)
    model.train()
    ref = None
    if args.get("beta", 0.0) > 0:
        ref = _model(args["model"]).requires_grad_(False).to(torch.bfloat16 if bf16 else
                                                                torch.float32)  # fmt: skip
    rows = args["rows"]
    batch = synthetic_rollouts(model, rows, args["prompt"], args["length"], k=args.get("k", 3),
                               mix_rate=0.2)  # fmt: skip
    if args.get("ragged", True):  # rows of different lengths, as rollouts are: padding masks
        for row in range(1, rows, 2):
            batch.response_mask[row, args["length"] - 1 - row % args["length"] :] = 0
    advantages = torch.linspace(-1, 1, rows)  # (R,)
    params = LearnerParams(group_size=rows, mini_batch_groups=1, micro_batch_size=args["micro"],
                           beta=args.get("beta", 0.0),
                           chunk_elements=args.get("chunk_elements"))  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    # as the trainer does: the policy module (soft inputs -> embed -> body -> chunked head) is
    # what accelerate wraps
    wrapped, optimizer = accelerator.prepare(SoftInputPolicy(model), optimizer)

    def update() -> None:
        update_policy(wrapped, optimizer, None, batch, advantages, params, ref_model=ref,
                      accelerator=accelerator)  # fmt: skip

    update()
    held = memory.start()
    update()
    peak = memory.peak()
    return {
        "peak_bytes": peak - baseline,
        "held_bytes": held - baseline,
        "baseline": baseline,
        "parameters": parameters,
        "method": memory.method,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
