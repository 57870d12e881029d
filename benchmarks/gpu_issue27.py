"""GPU checks of issue 27 (the GPU-only branches), in one short run (~2 minutes on an H100).

From the repository root on a machine with torch + transformers (no hub):

    PYTHONPATH=src OUT=<dir> python benchmarks/gpu_issue27.py
    SMALL=1 PYTHONPATH=src OUT=/tmp/x python benchmarks/gpu_issue27.py   # CPU, toy sizes

Sections, each printed and written to $OUT/gpu_issue27.json as soon as it ends:
1. `neighbors`: exact neighbours of 4,096 anchors in a random table of DeepSeek-R1-Distill-Qwen-
   1.5B's output projection shape (151,936 × 1,536), searched under the accelerator's bf16
   autocast, against the fp32 oracle (searched without autocast): must be equal; and how often a
   bf16 search (what ran before the fix) differs from the oracle.
2. `graphs`: tiny random Qwen2 in fp32 on the last GPU while GPU 0 is current: the static decoder
   with CUDA graphs vs eager — same tokens (CUDA graphs on the wrong device failed or replayed
   stale logits before the fix); graphs kept / captured.
3. `eval_cli`: `ngrpo eval --model base --bench arith-id --device cuda:0` (graphs on, auto)
   exits 0 and writes its summary.
"""

import json
import os
import subprocess
import sys
import time
import traceback

import torch

from ngrpo.method.exploration import ExplorationConfig
from ngrpo.method.neighbors import NeighborIndex, bruteforce_neighbors
from ngrpo.rollout import DecoderPool, EngineOptions, SamplingParams, generate

SMALL = os.environ.get("SMALL") == "1"
OUT = os.environ.get("OUT", "/tmp")
RESULT: dict = {"device": "cpu" if SMALL else torch.cuda.get_device_name(0)}


def section(name):
    def wrap(fn):
        start = time.time()
        try:
            RESULT[name] = fn()
        except Exception:  # noqa: BLE001 - report and go on
            RESULT[name] = {"error": traceback.format_exc()[-2000:]}
        RESULT[name]["seconds"] = round(time.time() - start, 1)
        print(name, json.dumps(RESULT[name]), flush=True)
        with open(os.path.join(OUT, "gpu_issue27.json"), "w") as out:
            json.dump(RESULT, out, indent=1)
        return fn

    return wrap


@section("neighbors")
def neighbors():
    device = "cpu" if SMALL else "cuda"
    vocab, dim, anchors = (8_000, 512, 512) if SMALL else (151_936, 1_536, 4_096)
    gen = torch.Generator(device).manual_seed(0)
    table = torch.randn(vocab, dim, generator=gen, device=device) * 0.02
    ids = torch.randperm(vocab, generator=gen, device=device)[:anchors]
    oracle, _ = bruteforce_neighbors(table, ids, 2)  # fp32, no autocast
    index = NeighborIndex(table, 2)
    with torch.autocast(device, dtype=torch.bfloat16):
        got = index.lookup(ids)
    normed = torch.nn.functional.normalize(table, dim=-1).bfloat16()  # the search before the fix
    old = normed[ids] @ normed.T
    old[torch.arange(anchors), ids] = float("-inf")
    before = torch.sort(old.float(), dim=-1, descending=True, stable=True).indices[:, :2]
    return {
        "shape": [vocab, dim], "anchors": anchors,
        "equal_to_oracle": bool(torch.equal(got, oracle)),
        "bf16_search_ordered_differs": float((before != oracle).any(-1).float().mean()),
        "bf16_search_set_differs": float(
            (before.sort(-1).values != oracle.sort(-1).values).any(-1).float().mean()
        ),
    }  # fmt: skip


@section("graphs")
def graphs():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    last = "cpu" if SMALL else f"cuda:{torch.cuda.device_count() - 1}"
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=500,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = Qwen2ForCausalLM(config).to(last).eval()  # fmt: skip
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    runs, pool = {}, DecoderPool()
    for graphs in ("off", "on") if not SMALL else ("off",):
        with torch.no_grad():
            runs[graphs] = generate(
                model, prompts, SamplingParams(n=4, max_new_tokens=300), eos_token_id=[1],
                pad_token_id=0, exploration=ExplorationConfig(strategy="neighbor", mix_top_k=2,
                mix_rate=0.3), answer_start_ids=[4], training=True, seed=3,
                engine=EngineOptions("static", graphs), decoders=pool,
            )  # fmt: skip
    out = {"model_device": last, "current_device": None if SMALL else torch.cuda.current_device()}
    if "on" in runs:
        out["same_tokens"] = bool(torch.equal(runs["on"].response_ids, runs["off"].response_ids))
        out["graphs_kept"] = len(pool.decoder.graphs)
        out["graphs_captured"] = pool.decoder.captures
        out["max_graphs"] = pool.decoder.max_graphs
    return out


@section("eval_cli")
def eval_cli():
    device = "cpu" if SMALL else "cuda:0"
    argv = [sys.executable, "-m", "ngrpo", "eval", "--model", "base", "--bench", "arith-id",
            "--limit", "16", "--n", "4", "--max-new-tokens", "64", "--device", device,
            "--out", os.path.join(OUT, "eval_cuda0.json")]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    return {"argv": argv[3:], "returncode": done.returncode, "stderr_tail": done.stderr[-1500:]}
