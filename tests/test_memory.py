"""The memory estimator (`ngrpo.memory`): hand-computed counts, the structure of the plan, the
estimate against the peak measured on CPU (tests/memory_check.py, fresh processes), `ngrpo plan`
and the `memory/peak_bytes` train metric's reduction (a maximum over processes)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ngrpo.cli import main
from ngrpo.memory import LORA_TARGETS, MemoryInputs, ModelShape, estimate
from ngrpo.utils.errors import NgrpoError

SEVEN_B = ModelShape.from_preset("r1-distill-7b")


def _inputs(shape=SEVEN_B, **changes) -> MemoryInputs:
    base = MemoryInputs(shape=shape, micro_rows=4, micro_width=12_288, response_tokens=8_192,
                        rollout_rows=64, prompt_tokens=4_096, new_tokens=8_192,
                        num_generations=4, gradient_checkpointing=True)  # fmt: skip
    return dataclasses.replace(base, **changes)


def _bytes(plan, name: str) -> int:
    (component,) = [c for c in plan.components if c.name == name]
    return component.bytes


def test_parameter_counts_match_hand_computation_and_the_real_model():
    # 7B by hand: embeddings + head 2·152,064·3,584; per layer q (3,584² + 3,584 bias),
    # k and v (3,584·512 + 512 each), o 3,584², MLP 3·3,584·18,944, two norms; final norm.
    layer = (3584**2 + 3584) + 2 * (3584 * 512 + 512) + 3584**2 + 3 * 3584 * 18944 + 2 * 3584
    assert SEVEN_B.parameters == 2 * 152_064 * 3_584 + 28 * layer + 3_584 == 7_615_616_512
    from ngrpo.models.presets import preset_model

    model = preset_model("tiny")
    assert ModelShape.from_preset("tiny").parameters == sum(p.numel() for p in model.parameters())
    assert ModelShape.from_config(model.config.to_dict()) == ModelShape.from_preset("tiny")


def test_lora_count_matches_hand_computation_and_peft():
    # r · (in + out) per projection: q, o 2·3,584; k, v 3,584 + 512; gate, up, down 3,584 + 18,944
    per_layer = 16 * (2 * 7168 + 2 * 4096 + 3 * 22528)
    assert SEVEN_B.lora_params(16) == 28 * per_layer == 40_370_176
    import peft

    from ngrpo.models.presets import preset_model

    lora = peft.get_peft_model(
        preset_model("tiny"), peft.LoraConfig(r=4, target_modules=list(LORA_TARGETS))
    )
    trained = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert ModelShape.from_preset("tiny").lora_params(4) == trained
    with pytest.raises(NgrpoError, match="'lm_head' is not a projection"):
        SEVEN_B.lora_params(4, ("lm_head",))


def test_fsdp_shards_weights_gradients_and_moments_by_world_size():
    one = estimate(_inputs(strategy="fsdp", world_size=1))
    eight = estimate(_inputs(strategy="fsdp", world_size=8))
    p = SEVEN_B.parameters
    assert _bytes(one, "AdamW moments") == 8 * p
    assert _bytes(eight, "AdamW moments") == 8 * p // 8
    assert _bytes(eight, "master weights") == _bytes(eight, "gradients") == 4 * p // 8
    assert "DDP gradient buckets" not in {c.name for c in eight.components}
    assert _bytes(eight, "rollout weight copy") == 2 * p  # full parameters, bf16
    assert eight.peak_bytes < one.peak_bytes


def test_ddp_replicates_and_adds_buckets_only_with_several_processes():
    one, eight = estimate(_inputs()), estimate(_inputs(world_size=8))
    p = SEVEN_B.parameters
    assert _bytes(eight, "AdamW moments") == _bytes(one, "AdamW moments") == 8 * p
    assert _bytes(eight, "DDP gradient buckets") == 4 * p
    assert "DDP gradient buckets" not in {c.name for c in one.components}
    # 7B under DDP: 16 bytes per parameter before activations, more than an 80 GB GPU
    assert one.phase_bytes["step"] > 16 * p > 80e9 and not one.fits()["80GB"]


def test_lora_trains_adapters_only_and_needs_no_reference_copy():
    full = estimate(_inputs(reference=True))
    lora = estimate(_inputs(reference=True, lora_r=16))
    names = {c.name for c in lora.components}
    assert "reference model" in {c.name for c in full.components}
    assert {"reference model", "head weight-gradient buffer", "master weights"} & names == set()
    assert lora.trainable_parameters == 40_370_176
    assert _bytes(lora, "AdamW moments") == 8 * 40_370_176
    assert _bytes(lora, "frozen base weights") == 2 * SEVEN_B.parameters  # bf16
    assert lora.peak_bytes < full.peak_bytes


def test_kv_cache_and_phase_totals():
    plan = estimate(_inputs())
    # rows × (prompt + new) × layers × 2 (k, v) × kv heads × head dim × 2 bytes
    assert _bytes(plan, "KV cache") == 64 * 12_288 * 28 * 2 * 4 * 128 * 2
    for phase, total in plan.phase_bytes.items():
        assert total == sum(c.bytes for c in plan.components if phase in c.phases)
    assert plan.peak_bytes == max(plan.phase_bytes.values())


def test_the_evaluation_decoder_and_the_graph_pool_are_planned():
    from ngrpo.cli.plan import load_plan_config
    from ngrpo.memory import inputs_from_config, shape_for_config

    name = "r1_distill_qwen_1.5b_ngrpo"
    cfg = load_plan_config(name, [])
    shape = shape_for_config(cfg, name)
    x = inputs_from_config(cfg, shape, world_size=8)  # 32 rollout rows per GPU, eval.n 32
    assert (x.rollout_rows, x.cuda_graphs, x.eval_rows, x.eval_tokens) == (32, True, 64, 12_288)
    assert not inputs_from_config(cfg, shape, device="cpu").cuda_graphs
    off = load_plan_config(name, ["rollout.cuda_graphs=off", "eval.every=0", "eval.at_start=false"])
    x_off = inputs_from_config(off, shape, world_size=8)
    assert (x_off.cuda_graphs, x_off.eval_rows, x_off.eval_tokens) == (False, 0, 0)
    per_row = 12_288 * shape.num_layers * 2 * shape.kv_dim * 2  # bf16 keys and values
    # the evaluation's 64 rows re-size the decoder: the KV cache is the larger of the two
    assert _bytes(estimate(x), "KV cache") == 64 * per_row
    assert _bytes(estimate(x_off), "KV cache") == 32 * per_row
    assert "CUDA graph pool" not in [c.name for c in estimate(x_off).components]
    kept = estimate(dataclasses.replace(x, keep_decoder=True))
    (pool,) = [c for c in kept.components if c.name == "CUDA graph pool"]
    assert pool.phases == ("rollout", "learner", "step")  # kept with the decoder
    assert pool.bytes > 64 * shape.vocab_size * 4  # at least the graphs' shared logits buffer
    fewer = estimate(dataclasses.replace(x, eval_rows=16, keep_decoder=True))
    assert _bytes(fewer, "CUDA graph pool") < pool.bytes  # sized for the decoder's rows


@pytest.mark.parametrize("change, message", [
    (dict(strategy="zero3"), "strategy must be one of ddp, fsdp"),
    (dict(world_size=0), "world_size must be an integer >= 1"),
    (dict(dtype="fp8"), "dtype must be one of"),
    (dict(strategy="fsdp", lora_r=8), "FSDP with LoRA is not supported"),
    (dict(eval_rows=-1), "eval_rows and eval_tokens must be >= 0"),
])  # fmt: skip
def test_bad_inputs_are_named(change, message):
    with pytest.raises(NgrpoError, match=message):
        estimate(_inputs(**change))


# ------------------------------------------------------------------ estimate vs CPU measurement

MID_SHAPE = dict(
    vocab_size=32_000,
    hidden_size=512,
    intermediate_size=1_536,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    tie_word_embeddings=False,
)
"""A random Qwen2 of 45M parameters (embeddings 2 × 16M): weights, gradients and AdamW state
dominate its update (~0.9 GB)."""


def _measure(args: dict) -> dict:
    script = Path(__file__).with_name("memory_check.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script), json.dumps(args)], capture_output=True,
                          text=True, timeout=300, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [
    # toy base model: activations dominate (~100 MB of ~115 MB)
    dict(model="base", rows=16, prompt=32, length=200, micro=8),
    dict(model="base", rows=16, prompt=32, length=200, micro=8, ckpt=True),
    # the trainer's bf16 path on CPU (accelerate's autocast): casts, fp32 residual stream
    dict(model="base", rows=16, prompt=32, length=200, micro=8, dtype="bfloat16"),
    # 45M: parameter state + a reference model + the head's buffers, checkpointing
    dict(model=MID_SHAPE, rows=4, prompt=16, length=112, micro=2, ckpt=True, beta=0.1),
    # a rollout (static decoder, fixed length): the KV cache dominates
    dict(model="base", rows=64, prompt=32, length=200, n=8, phase="rollout"),
], ids=["toy", "toy-ckpt", "toy-bf16", "45M-ref-ckpt", "toy-rollout"])  # fmt: skip
def test_estimate_within_25_percent_of_measured_cpu_peak(args, base_model_dir):
    measured = _measure(args)
    if args["model"] == "base":
        shape = ModelShape.from_model_dir(base_model_dir)
    else:
        shape = ModelShape.from_config({**args["model"], "model_type": "qwen2"})
    assert measured["parameters"] == shape.parameters
    rollout = args.get("phase") == "rollout"
    plan = estimate(MemoryInputs(
        shape=shape, micro_rows=args.get("micro", 1),
        micro_width=args["prompt"] + args["length"], response_tokens=args["length"],
        rollout_rows=args["rows"], prompt_tokens=args["prompt"], new_tokens=args["length"],
        num_generations=args.get("n", 1), dtype=args.get("dtype", "float32"), device="cpu",
        candidates=1 if rollout else 3, gradient_checkpointing=args.get("ckpt", False),
        reference=args.get("beta", 0) > 0,
    ))  # fmt: skip
    if rollout:  # sampling alone: fp32 weights, no gradients, optimizer state or batch yet
        absent = ("gradients", "AdamW moments", "rollout batch")
        estimated = plan.phase_bytes["rollout"] - sum(_bytes(plan, name) for name in absent)
    else:
        estimated = plan.peak_of(("learner", "step"))  # an update, no rollout
    assert 0.75 <= estimated / measured["peak_bytes"] <= 1.25, (estimated, measured)
    if args["model"] == "base" and not rollout:  # the update's activations dominate here
        assert measured["peak_bytes"] > 2 * measured["held_bytes"]


# ------------------------------------------------------------------------------- ngrpo plan


def test_plan_cli_json_for_the_7b_config_on_eight_gpus(capsys):
    argv = ["plan", "--config", "r1_distill_qwen_7b_ngrpo", "--world-size", "8", "--strategy",
            "fsdp", "--json"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"inputs", "parameters", "trainable_parameters", "components", "phase_bytes",
            "peak_bytes", "peak_phase", "fits"} <= set(report)  # fmt: skip
    assert report["parameters"] == 7_615_616_512  # shape guessed from the config's name
    assert report["inputs"]["strategy"] == "fsdp" and report["inputs"]["world_size"] == 8
    assert report["inputs"]["micro_width"] == 4_096 + 8_192 and report["inputs"]["candidates"] == 3
    assert set(report["fits"]) == {"24GB", "40GB", "80GB", "141GB"}
    assert report["peak_bytes"] == max(report["phase_bytes"].values())


def test_plan_cli_table_lora_and_overrides(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")  # rich's width: no cell wraps a phrase checked below
    argv = ["plan", "--config", "r1_distill_qwen_1.5b_grpo", "--lora-r", "16", "--device", "cuda",
            "rollout.generation_batch_size=32"]  # fmt: skip
    assert main(argv) == 0
    out = " ".join(capsys.readouterr().out.split())  # the table wraps with the terminal's width
    assert "LoRA r=16" in out and "frozen base weights" in out and "fits" in out
    assert "KV cache" in out and "CUDA graph pool" in out  # sizes: test_the_evaluation_decoder...


@pytest.mark.parametrize("argv, message", [
    (["--model-shape", "nope"], "unknown model shape 'nope'"),
    (["--world-size", "0"], "--world-size must be >= 1"),
    (["--lora-r", "-1"], "--lora-r must be >= 0"),
    (["train.micro_batch_size=0"], "train.micro_batch_size must be an integer >= 1"),
])  # fmt: skip
def test_plan_cli_errors(argv, message, capsys):
    assert main(["plan", "--config", "r1_distill_qwen_7b_grpo", *argv]) == 2
    assert message in capsys.readouterr().err


def test_plan_cli_required_model_path_without_a_shape(tmp_path, capsys):
    source = Path(__file__).parents[1] / "src/ngrpo/configs/r1_distill_qwen_7b_grpo.yaml"
    config = tmp_path / "mine.yaml"
    config.write_text(source.read_text())
    assert main(["plan", "--config", str(config)]) == 2
    assert "give model.path=DIR or --model-shape PRESET" in capsys.readouterr().err
    assert main(["plan", "--config", str(config), "--model-shape", "r1-distill-7b"]) == 0


# ------------------------------------------------------------------------ memory/peak_bytes


def test_peak_bytes_follows_a_large_allocation_on_cpu():
    from ngrpo.memory.usage import peak_bytes, reset_peak

    cpu = torch.device("cpu")
    reset_peak(cpu)
    before = peak_bytes(cpu)
    block = torch.ones(50_000_000)  # 200 MB, written: resident
    del block
    assert peak_bytes(cpu) >= before + 190_000_000


def test_reduce_takes_the_maximum_of_peak_bytes_over_processes():
    from ngrpo.trainer.step import _reduce

    other = {"memory/peak_bytes": 7e9, "rollout/tokens": 30.0, "reward/mean": 0.0}
    mine = {"memory/peak_bytes": 5e9, "rollout/tokens": 10.0, "reward/mean": 1.0}

    def gather(values):  # two processes: this one and `other`, in sorted-key order
        theirs = torch.tensor([other[k] for k in sorted(other)], dtype=values.dtype)
        return torch.cat([values, theirs])

    run = SimpleNamespace(accelerator=SimpleNamespace(num_processes=2, device="cpu",
                                                      gather=gather))  # fmt: skip
    assert _reduce(run, mine) == {"memory/peak_bytes": 7e9, "rollout/tokens": 40.0,
                                  "reward/mean": 0.5}  # fmt: skip


def test_memory_guide_tables_match_ngrpo_plan():
    """Every cell of the memory guide's tables (docs/guides/memory.md) is what `ngrpo plan`
    estimates now."""
    import re

    from ngrpo.cli.plan import load_plan_config
    from ngrpo.memory import inputs_from_config, shape_for_config

    guide = Path(__file__).parents[1] / "docs" / "guides" / "memory.md"
    section = guide.read_text(encoding="utf-8")
    tables = section.split("| config | GPUs | DDP | FSDP | LoRA r=16 (DDP) |")[1:]
    assert len(tables) == 2
    strategies = (("ddp", 0), ("fsdp", 0), ("ddp", 16))
    checked = 0
    for table, overrides in zip(tables, ([], ["rollout.generation_batch_size=32"]), strict=True):
        for name, gpus, *cells in re.findall(r"^\| `(\S+)` \| (\d+) \| (.+?) \| (.+?) \| (.+?) \|$",
                                             table, re.M):  # fmt: skip
            cfg = load_plan_config(name, overrides)
            for cell, (strategy, r) in zip(cells, strategies, strict=True):
                plan = estimate(inputs_from_config(cfg, shape_for_config(cfg, name),
                                                   world_size=int(gpus), strategy=strategy,
                                                   lora_r=r))  # fmt: skip
                fits = "/".join(k.removesuffix("GB") for k, ok in plan.fits().items() if ok)
                expected = f"{plan.peak_bytes / 1e9:.1f} ({plan.peak_phase}) · {fits or 'none'}"
                assert cell == expected, (name, gpus, strategy, r, cell, expected)
                checked += 1
    assert checked == 18
