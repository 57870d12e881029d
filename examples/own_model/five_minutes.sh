#!/usr/bin/env bash
# Your own model in five minutes: build a tiny model and data of your own, then plan, train
# (GRPO, resume, N-GRPO with LoRA), export and evaluate them with ngrpo. About a minute on a
# laptop CPU; CI runs it (.ci/run). Usage: examples/own_model/five_minutes.sh [WORK_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mkdir -p "${1:-$(mktemp -d)}" && cd "${1:-.}" && pwd)
python=${PYTHON:-python}
ngrpo=${NGRPO:-ngrpo}
cd "$here"  # config.yaml names its reward functions by a path relative to this directory

# 1. a model and data of your own (any Hugging Face model directory and JSONL/Parquet file)
"$python" make_model.py "$work/model"
"$python" make_data.py "$work/data"
mine=(model.path="$work/model" data.train="$work/data/train.parquet")

# 2. the memory plan on this machine, then 2 GRPO steps and 1 more on resume
"$ngrpo" plan --config config.yaml "${mine[@]}"
"$ngrpo" train --config config.yaml "${mine[@]}" output_dir="$work/runs/grpo"
"$ngrpo" train --resume "$work/runs/grpo" train.steps=3

# 3. N-GRPO with LoRA adapters, evaluated on your own test set at start and end
"$ngrpo" train --config config.yaml "${mine[@]}" output_dir="$work/runs/ngrpo-lora" \
  exploration.strategy=neighbor model.lora.r=8 data.eval_sets="$work/data/test.jsonl" \
  eval.every=2 eval.best_metric=eval/test/mean@n

# 4. the adapters merged into a plain Hugging Face model, evaluated on the same test set
"$ngrpo" export "$work/runs/ngrpo-lora" "$work/merged"
"$ngrpo" eval --model "$work/merged" --bench "$work/data/test.jsonl" --n 2 --limit 8 --max-new-tokens 32 \
  --out "$work/eval/merged.json"
test -s "$work/eval/merged.json"
echo "done: $work"
