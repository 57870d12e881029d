"""`ngrpo bench train`: whole training steps of `ngrpo train` at a model's shape, every phase timed.

The run is made on the spot, no hub: a Hugging Face directory with random weights of a preset's
shape (`ngrpo.models.presets`) and the embedded tokenizer (the model's larger vocabulary is
scored and sampled, only the first ids are ever prompted), a training file of `prompts` problems of
`prompt_tokens` words, and the shipped `tiny_ngrpo` config (`tiny_grpo` for `--strategy none`)
with the shape's overrides: group size, response length, micro-batch, bf16 on CUDA, mixing as the
paper's 1.5B run (`mix_rate` 0.1, no entropy gate), evaluation and checkpoints off. Lengths are
forced: with random weights EOS is drawn with probability ~1/V per step, so responses run to
`new_tokens` (`response_tokens_mean` says so). The steps are the trainer's own (`_setup` once,
then `_train_step`, what `ngrpo train` runs per step, without its logging and saving).

Reported per timed step (the first `warmup` steps are run and reported apart: they capture graphs,
build caches and allocate): wall seconds and the phases the step logs (`time/*`): `generate`,
`rewards` (the rest of the rollout phase), `reference`, `old_logprobs` (the π_old recompute),
`forward_backward`, `optimizer` (clipping, AdamW, scheduler), `rollout_copy` (FSDP), and `other`
= step − the sum (advantages, metrics, host work between phases). Throughputs: rollout tokens /
generate seconds, learner tokens (prompt + response of every row, per PPO epoch) /
forward_backward seconds, and on CUDA the learner's fraction of the measured bf16 matmul peak
(6 · parameters · learner tokens / forward_backward seconds / peak). Memory: the step's peak
(`memory/peak_bytes`) next to `ngrpo plan`'s estimate for the same config. `--profile`: one more
step under `torch.profiler`, its top ops by self device time (CUDA) or self CPU time.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ngrpo.bench.learner import bf16_matmul_peak
from ngrpo.bench.timing import sync_device

PHASES = ("generate", "rewards", "reference", "old_logprobs", "forward_backward", "optimizer",
          "rollout_copy")  # fmt: skip


def _words(tokenizer, count: int) -> list[str]:
    """`count` prompt words, each one token of the embedded vocabulary."""
    vocab = [w for w, i in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
             if w.isalpha() and i not in tokenizer.all_special_ids]  # fmt: skip
    return [vocab[i % len(vocab)] for i in range(count)]


def make_run_dir(preset: str, workdir: Path, prompts: int, prompt_tokens: int) -> Path:
    """Write the random-weight model directory and the training file under `workdir`."""
    from ngrpo.models.presets import preset_model
    from ngrpo.models.tokenizer import build_tokenizer, save_tokenizer

    model_dir = workdir / f"{preset}-random"
    tokenizer = build_tokenizer()
    if not (model_dir / "config.json").is_file():
        model = preset_model(preset, dtype=torch.bfloat16)
        model.config.eos_token_id = tokenizer.eos_token_id
        model.config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(str(model_dir), safe_serialization=True)
        save_tokenizer(tokenizer, model_dir)
        del model
    words = _words(tokenizer, prompt_tokens)
    rows = [{"problem": " ".join(words[i:] + words[:i]), "answer": "1"} for i in range(prompts)]
    (workdir / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return model_dir


def bench_config(model_dir: Path, workdir: Path, *, device: str, dtype: str, prompts: int,
                 group: int, prompt_tokens: int, new_tokens: int, micro_batch: int,
                 mini_batch: int | None, strategy: str, steps: int, extra=()):  # fmt: skip
    """The run's `TrainConfig` (see the module docstring)."""
    from ngrpo.config import load_config

    name = "tiny_grpo" if strategy == "none" else "tiny_ngrpo"
    overrides = [
        f"model.path={model_dir}", f"model.device={device}", f"model.dtype={dtype}",
        f"data.train={workdir / 'train.jsonl'}", "data.eval_sets=", "eval.every=0",
        "eval.at_start=false", f"data.max_prompt_length={prompt_tokens + 32}",
        f"rollout.num_generations={group}", f"rollout.max_completion_length={new_tokens}",
        f"train.prompts_per_step={prompts}", f"train.mini_batch_prompts={mini_batch or prompts}",
        f"train.micro_batch_size={micro_batch}", f"train.steps={steps}",
        f"output_dir={workdir / 'run'}", "logging.save_every=0",
    ]  # fmt: skip
    if strategy != "none":
        overrides += [f"exploration.strategy={strategy}", "exploration.mix_rate=0.1",
                      "exploration.entropy_threshold=null"]  # fmt: skip
    return load_config(name, [*overrides, *extra])


def _phases(metrics: dict[str, float], wall: float) -> dict[str, float]:
    phases = {
        "generate": metrics["time/generate_s"],
        "rewards": metrics["time/rollout_s"] - metrics["time/generate_s"],
        **{name: metrics.get(f"time/{name}_s", 0.0) for name in PHASES[2:]},
    }
    phases["other"] = wall - sum(phases.values())
    return phases


def _top_ops(prof, device: torch.device, count: int = 15) -> list[dict]:
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    return [
        {"op": e.key, "calls": e.count, "self_ms": getattr(e, key) / 1000,
         "self_cpu_ms": e.self_cpu_time_total / 1000}
        for e in events[:count]
    ]  # fmt: skip


def train_report(
    cfg,
    *,
    parameters: int | None = None,
    warmup: int = 1,
    profile: bool = False,
    progress: Callable[[str], None] | None = None,
    checkpoint: Callable[[dict], None] | None = None,
) -> dict:
    """Run `cfg.train.steps` steps (`warmup` of them reported apart), then with `profile` one
    more under the profiler, and return the report (`checkpoint` gets it before the profile)."""
    from ngrpo.trainer.setup import _setup
    from ngrpo.trainer.step import _train_step

    say = progress or (lambda _: None)
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    say("setting up")
    run = _setup(cfg, run_dir, resume=False)
    device = run.accelerator.device
    parameters = parameters or sum(p.numel() for p in run.policy.parameters())
    steps = []
    try:
        for i in range(cfg.train.steps):
            say(f"step {i + 1}/{cfg.train.steps}")
            sync_device(device)
            start = time.perf_counter()
            metrics = _train_step(run)
            sync_device(device)
            run.step += 1
            steps.append(_step_entry(metrics, time.perf_counter() - start, cfg, device))
        report = _summary(cfg, steps, warmup, parameters, device)
        if checkpoint is not None:  # what a cut-short profile would lose
            checkpoint(report)
        if profile:
            say("profiling a step")
            activities = [torch.profiler.ProfilerActivity.CPU]
            if device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            with torch.profiler.profile(activities=activities) as prof:
                _train_step(run)
                sync_device(device)
            report["profile_top_ops"] = _top_ops(prof, device)
    finally:
        run.rewards.close()
        run.pool.close()
    return report


def _summary(cfg, steps: list[dict], warmup: int, parameters: int, device) -> dict:
    from ngrpo.memory import estimate
    from ngrpo.memory.from_config import inputs_from_config, shape_for_config

    timed = steps[warmup:] or steps
    shape = shape_for_config(cfg)
    plan = estimate(inputs_from_config(cfg, shape, device=device.type))
    peak = bf16_matmul_peak(device)
    fwd_bwd = statistics.median(s["phases"]["forward_backward"] for s in timed)
    learner_tokens = timed[0]["learner_tokens"]
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": cfg.model.dtype, "parameters": parameters,
        "shape": {"prompts": cfg.train.prompts_per_step, "group": cfg.rollout.num_generations,
                  "prompt_tokens_max": cfg.data.max_prompt_length,
                  "new_tokens": cfg.rollout.max_completion_length,
                  "micro_batch": cfg.train.micro_batch_size,
                  "mini_batch_prompts": cfg.train.mini_batch_prompts,
                  "strategy": cfg.exploration.strategy},
        "warmup_steps": steps[:warmup], "steps": timed,
        "median": {
            "step_s": statistics.median(s["step_s"] for s in timed),
            **{f"{k}_s": statistics.median(s["phases"][k] for s in timed)
               for k in (*PHASES, "other")},
            "rollout_tokens_per_s": statistics.median(s["rollout_tokens_per_s"] for s in timed),
            "learner_tokens_per_s": learner_tokens / fwd_bwd,
        },
        "bf16_matmul_peak_tflops": None if peak is None else peak / 1e12,
        "learner_bf16_peak_fraction": None if peak is None
        else 6 * parameters * learner_tokens / fwd_bwd / peak,
        "memory": {"peak_bytes": max(s["peak_bytes"] for s in timed),
                   "plan_peak_bytes": plan.peak_bytes},
    }  # fmt: skip


def _step_entry(metrics: dict[str, float], wall: float, cfg, device) -> dict:
    rows = cfg.train.prompts_per_step * cfg.rollout.num_generations
    response = metrics["rollout/tokens"] / rows
    prompt = metrics["rollout/prompt_len"]
    learner_tokens = rows * (prompt + response) * cfg.train.num_iterations
    return {
        "step_s": wall,
        "phases": _phases(metrics, wall),
        "response_tokens_mean": response,
        "rollout_tokens_per_s": metrics["rollout/tokens"] / max(metrics["time/generate_s"], 1e-9),
        "learner_tokens": learner_tokens,
        "peak_bytes": metrics["memory/peak_bytes"],
        "graph_capture_s": metrics.get("rollout/graph_capture_s", 0.0),
        "mismatch_logp_abs_max": metrics.get("mismatch/logp_abs_max", 0.0),
        "ratio_max": metrics.get("actor/ratio_max", 1.0),
    }
