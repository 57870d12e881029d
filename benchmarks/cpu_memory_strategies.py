"""Peak memory per process on CPU: DDP vs FSDP vs LoRA on the same run, next to `ngrpo plan`.

    python benchmarks/cpu_memory_strategies.py [--out benchmarks/cpu_memory_strategies.json]

Builds a random Qwen2 (hidden 1,024, MLP 2,816, 8 layers, 16 / 4 heads; the embedded tokenizer,
~95M parameters) in a temporary directory, then runs the same two training steps of `tiny_grpo`
(4 prompts × 4 rollouts of 32 tokens, `beta` 0.01, one checkpoint) as: one process full-weight,
one process LoRA r=16, and two processes (torchrun, gloo) each of DDP, FSDP and DDP + LoRA r=16.
glibc is told to return freed blocks of 64 KiB and more (MALLOC_MMAP_THRESHOLD_), so the
resident set follows live tensors. Per process it records the runtime's resident memory before
the model is loaded, the peak of the second training step (VmHWM reset at the step's start:
rollout, learner and optimizer step, the steady state) and the lifetime peak (model loading and
checkpoint writing included). The estimate is `ngrpo plan`'s peak for the same settings; it
leaves out the runtime, so compare it with the step peak minus the runtime.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

WRAPPER = r'''
import json, os, resource, sys
import ngrpo.trainer.loop
from ngrpo.cli import main
from ngrpo.memory.usage import peak_bytes, status_bytes

def step(run):
    metrics = inner(run)
    steps.append(peak_bytes(run.accelerator.device))  # this step's peak, this process
    return metrics

if __name__ == "__main__":  # not in worker processes that re-import the main module
    runtime, steps = status_bytes("VmRSS"), []
    inner = ngrpo.trainer.loop._train_step
    ngrpo.trainer.loop._train_step = step
    code = main(sys.argv[1:])
    print("MEMORY " + json.dumps({
        "rank": int(os.environ.get("RANK", 0)), "runtime_bytes": runtime,
        "step_peaks_bytes": steps,
        "lifetime_peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
    sys.exit(code)
'''

SHAPE = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
             num_key_value_heads=4)  # fmt: skip
COMMON = [
    "--config", "tiny_grpo", "train.steps=2", "train.prompts_per_step=4",
    "train.mini_batch_prompts=4", "rollout.num_generations=4", "rollout.max_completion_length=32",
    "eval.every=0", "eval.at_start=false", "train.beta=0.01", "logging.save_every=2",
    "model.device=cpu", "model.dtype=float32",
]  # fmt: skip
RUNS = {  # name: (processes, extra overrides, plan flags)
    "1 process, full weights": (1, [], ["--strategy", "ddp"]),
    "1 process, LoRA r=16": (1, ["model.lora.r=16"], ["--strategy", "ddp", "--lora-r", "16"]),
    "2 processes, DDP": (2, ["train.strategy=ddp"], ["--strategy", "ddp"]),
    "2 processes, FSDP": (2, ["train.strategy=fsdp"], ["--strategy", "fsdp"]),
    "2 processes, DDP + LoRA r=16": (2, ["model.lora.r=16"],
                                     ["--strategy", "ddp", "--lora-r", "16"]),
}  # fmt: skip


def build_model(directory: Path) -> int:
    """A random Qwen2 of `SHAPE` with the embedded tokenizer, saved in `directory`."""
    import shutil

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from ngrpo.models.load import resolve_model_path

    base = resolve_model_path("base")
    config = json.loads((base / "config.json").read_text())
    for key in ("architectures", "model_type", "transformers_version", "dtype", "layer_types"):
        config.pop(key, None)
    config.update(SHAPE)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**config))
    model.save_pretrained(directory)
    for path in base.iterdir():
        if path.suffix in (".json", ".jinja", ".py") and path.name != "config.json":
            shutil.copy(path, directory / path.name)
    return sum(p.numel() for p in model.parameters())


def run(processes: int, args: list[str], wrapper: Path) -> list[dict]:
    # glibc serves blocks of 64 KiB and more with mmap and returns them on free, so the resident
    # set follows the live tensors (what a GPU's max_memory_allocated shows) rather than what
    # malloc keeps for reuse (as `ngrpo.memory.usage.PeakMemory` does in-process)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    if processes == 1:
        command = [sys.executable, str(wrapper), *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node", str(processes), str(wrapper), *args]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200, env=env)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    rows = [json.loads(line.split("MEMORY ", 1)[1]) for line in done.stdout.splitlines()
            if line.startswith("MEMORY ")]  # fmt: skip
    return sorted(rows, key=lambda r: r["rank"])


def plan_peak(model_dir: Path, processes: int, flags: list[str], extra: list[str]) -> int:
    args = [a for a in COMMON if a != "--config" and a != "tiny_grpo"]
    overrides = [a for a in [*args, *extra] if not a.startswith(("train.strategy", "model.lora"))]
    command = [sys.executable, "-m", "ngrpo", "plan", "--config", "tiny_grpo",
               f"model.path={model_dir}", *overrides, "--world-size", str(processes), *flags,
               "--json"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    return int(json.loads(done.stdout)["peak_bytes"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/cpu_memory_strategies.json")
    out = Path(parser.parse_args().out)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wrapper = tmp / "measure.py"
        wrapper.write_text(WRAPPER)
        parameters = build_model(tmp / "model")
        report = {"command": "python benchmarks/cpu_memory_strategies.py", "device": "cpu",
                  "model": {**SHAPE, "parameters": parameters, "dtype": "float32"},
                  "settings": COMMON, "runs": {}}  # fmt: skip
        for name, (processes, extra, flags) in RUNS.items():
            args = [*COMMON, f"model.path={tmp / 'model'}", f"output_dir={tmp / name}", *extra]
            ranks = run(processes, ["train", *args], wrapper)
            report["runs"][name] = {
                "processes": processes, "overrides": extra,
                "per_process": [{
                    "rank": r["rank"], "runtime_mib": r["runtime_bytes"] / 2**20,
                    "step2_peak_mib": r["step_peaks_bytes"][-1] / 2**20,
                    "lifetime_peak_mib": r["lifetime_peak_bytes"] / 2**20,
                } for r in ranks],
                "plan_peak_mib": plan_peak(tmp / "model", processes, flags, extra) / 2**20,
            }  # fmt: skip
            print(name, json.dumps(report["runs"][name]), flush=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
