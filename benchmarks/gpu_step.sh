#!/usr/bin/env bash
# One GPU session for the bf16 rollout-learner gap (issue 19) and the whole training step
# (issue 20), in priority order, each section under its own timeout, JSON written as it goes:
#   (1) `ngrpo bench mismatch` at DeepSeek-R1-Distill-Qwen-1.5B's shape (random weights) and on
#       the embedded base model: the gap per decoder precision and strategy, layer by layer, the
#       pi_old recompute cost, each precision's decode step;
#   (2) `ngrpo bench train --preset r1-distill-1.5b`: whole `ngrpo train` steps, phases, peak
#       memory vs `ngrpo plan`, one profiled step;
#   (3) `ngrpo train --config tiny_ngrpo` in bf16 for 3 steps, the shipped default (pi_old
#       recomputed, decoder precision learner) and the previous behaviour (pi_old from the
#       rollout, decoder in bf16): mismatch/* and ratio extremes per step;
#   (4) `ngrpo bench rollout --preset r1-distill-1.5b`: decode ms/step, none vs neighbor.
# Run from the repository root: OUT=/some/dir bash benchmarks/gpu_step.sh
# CPU dry run at toy size: DEVICE=cpu PRESET=tiny SMALL=1 OUT=/tmp/x bash benchmarks/gpu_step.sh
# Needs torch, transformers, accelerate (+ math-verify for the trainer). The embedded base model
# ships with ngrpo (src/ngrpo/models/base/): nothing is built on the device.
set -uo pipefail
OUT=${OUT:?set OUT to the output directory}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-r1-distill-1.5b}
SMALL=${SMALL:-0}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt"
"$PY" -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)" | tee -a "$OUT/gpu.txt"
if [[ $SMALL == 1 ]]; then
  MM_PRESET="--prompts 2 --n 2 --prompt-tokens 8 --new-tokens 8"
  MM_BASE="--prompts 2 --n 2 --new-tokens 8"
  TRAIN="--prompts 2 --group 2 --prompt-tokens 8 --new-tokens 8 --micro-batch 2 --steps 2"
  TINY="rollout.num_generations=2 train.prompts_per_step=2 train.mini_batch_prompts=2 rollout.max_completion_length=8"
  ROLL="--rows 4 --prompt-tokens 8 --lengths 16"
else
  MM_PRESET="--prompts 32 --n 8 --prompt-tokens 128 --new-tokens 256"
  MM_BASE="--prompts 64 --n 8 --new-tokens 48"
  TRAIN="--prompts 16 --group 8 --prompt-tokens 256 --new-tokens 2048 --micro-batch 8 --steps 2"
  TINY=""
  ROLL="--rows 256 --prompt-tokens 256 --lengths 1024"
fi

echo "== (1) bench mismatch, $PRESET shape and embedded base, bf16"
timeout "${MM_TIMEOUT:-150}" "$PY" -m ngrpo.cli bench mismatch --preset "$PRESET" --device "$DEVICE" \
  $MM_PRESET --time-decode --json "$OUT/mismatch_${PRESET}.json"
echo "(1a) exit $?"
timeout "${MM_TIMEOUT:-150}" "$PY" -m ngrpo.cli bench mismatch --model base --device "$DEVICE" \
  $MM_BASE --time-decode --json "$OUT/mismatch_base.json"
echo "(1b) exit $?"

echo "== (2) bench train, $PRESET shape"
timeout "${TRAIN_TIMEOUT:-200}" "$PY" -m ngrpo.cli bench train --preset "$PRESET" --device "$DEVICE" \
  $TRAIN --profile --workdir /tmp/ngrpo-bench-train --json "$OUT/train_${PRESET}.json"
echo "(2) exit $?"

echo "== (3) ngrpo train tiny_ngrpo, bf16, 3 steps: default vs previous behaviour"
for variant in default previous; do
  extra=""
  if [[ $variant == previous ]]; then extra="train.old_logprobs=rollout rollout.precision=compute train.rollout_correction=none"; fi
  timeout "${TINY_TIMEOUT:-60}" "$PY" -m ngrpo.cli train --config tiny_ngrpo model.dtype=bfloat16 \
    model.device="$DEVICE" train.steps=3 eval.every=0 eval.at_start=false \
    output_dir="/tmp/ngrpo-tiny-$variant" $TINY $extra > "$OUT/tiny_${variant}.log" 2>&1
  echo "(3 $variant) exit $?"
  cp "/tmp/ngrpo-tiny-$variant/metrics.jsonl" "$OUT/tiny_${variant}_metrics.jsonl" 2>/dev/null
done

echo "== (4) bench rollout, $PRESET shape, none vs neighbor"
timeout "${ROLL_TIMEOUT:-90}" "$PY" -m ngrpo.cli bench rollout --preset "$PRESET" --device "$DEVICE" \
  $ROLL --strategies none,neighbor --repeats 2 --json "$OUT/rollout_${PRESET}.json"
echo "(4) exit $?"
