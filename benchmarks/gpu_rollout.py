"""GPU check and benchmark of the rollout engine (issue 11), in one short run (~4 minutes).

From the repository root on a machine with torch + transformers (no hub, no rich needed):

    PYTHONPATH=src OUT=<dir> BUDGET=200 python benchmarks/gpu_rollout.py
    SMALL=1 PYTHONPATH=src OUT=/tmp/x python benchmarks/gpu_rollout.py   # CPU, toy sizes, seconds

Sections, each printed (flushed) and written to $OUT/gpu_rollout.json as soon as it ends, so a run
cut short still reports; a section is skipped when less than its estimate of BUDGET seconds is left:
1. `correctness` (fp32, tiny random Qwen2 and Llama): static decoder with CUDA graphs vs eager vs
   the dynamic-cache decoder — same tokens; replay invariant (learner log-probs == rollout
   log-probs, <= 1e-4); compaction and shared prefill visible in the stats. bf16: token agreement
   of graph vs eager (informational: bf16 rounding may differ between kernels).
2. `paper`: `rollout_scale.scale_report` on random weights of DeepSeek-R1-Distill-Qwen-1.5B's shape,
   bf16, 256 rows x 256 prompt tokens: ms per decoding step at 1,024 (none, neighbor), 2,048 and
   4,096 (none) new tokens, tokens/s, fraction of the memory roofline (measured copy bandwidth).
3. `varied`: the same model, a batch with very different response lengths (EOS hazard 1/1000 per
   step, at most 2,048 tokens), finished rows compacted vs not.
4. `graphs_off`: 1,024 tokens with CUDA graphs off (eager static decoder), for the graph's effect.
"""

import json
import os
import sys
import time
import traceback

import torch

from ngrpo.bench import rollout_scale
from ngrpo.method.exploration import ExplorationConfig
from ngrpo.models.presets import preset_model
from ngrpo.rollout import EngineOptions, SamplingParams, generate, replay_logprobs

SMALL = os.environ.get("SMALL") == "1"
DEVICE = torch.device("cpu" if SMALL else "cuda")
OUT = os.environ.get("OUT", "/tmp")
BUDGET = float(os.environ.get("BUDGET", "200"))
T0 = time.time()
RESULT: dict = {"device": str(DEVICE) if SMALL else torch.cuda.get_device_name(0),
                "torch": torch.__version__}  # fmt: skip


def save() -> None:
    import transformers

    RESULT["transformers"] = transformers.__version__
    RESULT["elapsed_s"] = round(time.time() - T0, 1)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "gpu_rollout.json"), "w") as f:
        json.dump(RESULT, f, indent=1)


def say(text: str) -> None:
    print(f"[{time.time() - T0:6.1f}s] {text}", flush=True)


def section(name: str, estimate_s: float, fn) -> None:
    left = BUDGET - (time.time() - T0)
    if left < estimate_s:
        RESULT[name] = f"skipped: {left:.0f} s left, needs ~{estimate_s:.0f} s"
        say(RESULT[name])
        save()
        return
    say(f"== {name}")
    try:
        RESULT[name] = fn()
    except Exception as err:  # report and go on: the other sections still run
        RESULT[name] = f"error: {type(err).__name__}: {err}"[:1000]
        traceback.print_exc()
        sys.stderr.flush()
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()
    save()
    say(json.dumps({name: RESULT[name]})[:3000])


# ----------------------------------------------------------------------------- 1. correctness


def _tiny(kind: str, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    common = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  initializer_range=0.3, tie_word_embeddings=False)  # fmt: skip
    config_cls, model_cls = {"qwen2": (Qwen2Config, Qwen2ForCausalLM),
                             "llama": (LlamaConfig, LlamaForCausalLM)}[kind]  # fmt: skip
    with torch.device(DEVICE):
        model = model_cls(config_cls(**common))
    return model.to(dtype).eval()


PROMPTS = [[10, 11, 12, 13, 14, 15, 16], [20, 21], [30, 31, 32, 33], [40], [50, 51, 52]]


def _rollout(model, engine, strategy="neighbor", seed=3):
    return generate(
        model, PROMPTS, SamplingParams(n=4, max_new_tokens=48), eos_token_id=[1, 2, 3],
        pad_token_id=0, exploration=ExplorationConfig(strategy=strategy, mix_top_k=3, mix_rate=0.5),
        answer_start_ids=[299, 298], training=True, seed=seed, engine=engine,
    )  # fmt: skip


def _compare(a, b) -> dict:
    mask = a.response_mask.bool() & b.response_mask.bool()
    return {
        "same_tokens": bool(torch.equal(a.response_ids, b.response_ids)),
        "token_agreement": float((a.response_ids == b.response_ids).float().mean()),
        "max_logprob_diff": float((a.logprobs - b.logprobs)[mask].abs().max()),
    }


def correctness() -> dict:
    graphs = "off" if SMALL else "on"
    out = {}
    for kind in ("qwen2", "llama"):
        model = _tiny(kind, torch.float32)
        for strategy in ("none", "neighbor", "gaussian"):
            graphed = _rollout(model, EngineOptions("static", graphs), strategy)
            eager = _rollout(model, EngineOptions("static", "off"), strategy)
            dynamic = _rollout(model, EngineOptions("dynamic", "off"), strategy)
            plain = _rollout(model, EngineOptions("static", graphs, compact=False,
                                                  shared_prefill=False), strategy)  # fmt: skip
            with torch.no_grad():
                replayed = replay_logprobs(model, graphed, temperature=1.0)
            mask = graphed.response_mask.bool()
            lengths = graphed.response_mask.sum(-1)
            out[f"{kind}/{strategy}"] = {
                "graph_vs_eager": _compare(graphed, eager),
                "graph_vs_dynamic": _compare(graphed, dynamic),
                "compact_prefill_vs_plain": _compare(graphed, plain),
                "replay_max_err": float((replayed - graphed.logprobs)[mask].abs().max()),
                "mixed_tokens": int(graphed.mixed.sum()),
                "lengths_min_max": [int(lengths.min()), int(lengths.max())],
                "decoded_rows": graphed.stats["rollout/decoded_rows"],
                "decoded_rows_without_compaction": plain.stats["rollout/decoded_rows"],
                "graphs": graphed.stats["rollout/graphs"],
            }
    checks = [v for v in out.values()]
    out["all_fp32_ok"] = all(
        c["graph_vs_eager"]["same_tokens"] and c["graph_vs_dynamic"]["same_tokens"]
        and c["compact_prefill_vs_plain"]["same_tokens"] and c["replay_max_err"] <= 1e-4
        for c in checks
    )  # fmt: skip
    if not SMALL:
        model = _tiny("qwen2", torch.bfloat16)
        graphed = _rollout(model, EngineOptions("static", "on"))
        eager = _rollout(model, EngineOptions("static", "off"))
        out["bf16_graph_vs_eager"] = _compare(graphed, eager)
    return out


# ----------------------------------------------------------------------------- 2-4. paper shape

if SMALL:
    PRESET, ROWS, PROMPT, LENGTHS, VARIED = "tiny", 16, 32, [64, 128, 256], 256
else:
    PRESET, ROWS, PROMPT, LENGTHS, VARIED = "r1-distill-1.5b", 256, 256, [1024, 2048, 4096], 2048
MODEL = {}
ENGINE = EngineOptions()  # CUDA graphs on CUDA; off if the correctness section failed with them


def paper_model():
    if "model" not in MODEL:
        dtype = torch.float32 if SMALL else torch.bfloat16
        MODEL["model"] = preset_model(PRESET, DEVICE, dtype)
    return MODEL["model"]


def paper() -> dict:
    partial: dict = {}
    RESULT["paper"] = partial

    def checkpoint(report: dict) -> None:
        partial.update(report)
        save()

    report = rollout_scale.scale_report(
        paper_model(), rows=ROWS, prompt_tokens=PROMPT, lengths=LENGTHS[:1],
        strategies=("none", "neighbor"), repeats=1, progress=say, checkpoint=checkpoint,
        engine=ENGINE,
    )  # fmt: skip
    checkpoint(report)
    for length in LENGTHS[1:]:
        if BUDGET - (time.time() - T0) < 25 * length / 1024 + 10:
            partial["lengths"][str(length)] = "skipped: budget"
            continue
        more = rollout_scale.scale_report(
            paper_model(), rows=ROWS, prompt_tokens=PROMPT, lengths=[length], strategies=("none",),
            repeats=1, progress=say, engine=ENGINE,
        )  # fmt: skip
        partial["lengths"][str(length)] = more["lengths"][str(length)]
        save()
    ms = {k: v["none"]["ms_per_step"] for k, v in partial["lengths"].items() if isinstance(v, dict)}
    if len(ms) > 1:
        partial["ms_per_step_longest_over_shortest"] = ms[max(ms, key=int)] / ms[min(ms, key=int)]
    return partial


def varied() -> dict:
    model = paper_model()
    vocab = model.get_input_embeddings().weight.shape[0]
    prompts = rollout_scale._prompts(vocab, ROWS, PROMPT, low=2 + round(vocab / 1000))
    return rollout_scale._varied_lengths(
        model, prompts, VARIED, 1 / 1000, DEVICE, ENGINE.cuda_graphs
    )


def graphs_off() -> dict:
    model = paper_model()
    vocab = model.get_input_embeddings().weight.shape[0]
    prompts = rollout_scale._prompts(vocab, ROWS, PROMPT, low=2)
    length = LENGTHS[0]
    engine = EngineOptions(cuda_graphs="off")
    generate(model, prompts, SamplingParams(n=1, max_new_tokens=16), eos_token_id=[],
             pad_token_id=0, engine=engine)  # fmt: skip
    seconds, batch, peak = rollout_scale._timed_batch(
        lambda: generate(model, prompts, SamplingParams(n=1, max_new_tokens=length),
                         eos_token_id=[], pad_token_id=0, engine=engine),
        DEVICE,
    )  # fmt: skip
    return {"length": length, "ms_per_step": 1000 * seconds / length,
            "tokens_per_s": ROWS * length / seconds, "peak_gb": peak}  # fmt: skip


if __name__ == "__main__":
    say(f"device {RESULT['device']}, budget {BUDGET:.0f} s, out {OUT}")
    save()
    section("correctness", 15, correctness)
    if isinstance(RESULT.get("correctness"), str) and not SMALL:  # the graphed path failed
        ENGINE = EngineOptions(cuda_graphs="off")
        RESULT["fallback"] = "correctness failed: paper numbers WITHOUT CUDA graphs"
        say(RESULT["fallback"])
    section("paper", 40, paper)
    if isinstance(RESULT.get("paper"), str) and ENGINE.cuda_graphs != "off" and not SMALL:
        ENGINE = EngineOptions(cuda_graphs="off")  # salvage the numbers without graphs
        RESULT["fallback"] = "paper failed with CUDA graphs: numbers below WITHOUT them"
        RESULT["paper_graph_error"] = RESULT["paper"]
        section("paper_no_graphs", 40, paper)
    section("varied", 45, varied)
    section("graphs_off", 30, graphs_off)
    say("done")
    save()
