#!/usr/bin/env bash
# The learner on a GPU (issue 11, items 4 and 5), in about two minutes on an H100/H200:
#   (a) correctness on CUDA at toy size, fp32: chunked scoring == full logits (values, entropy,
#       gradients) and token-budget micro-batches == one micro-batch, tolerance 1e-5;
#   (b) one learner update at DeepSeek-R1-Distill-Qwen-1.5B's shape (random weights, bf16),
#       4 rows x (256 + 8,192) tokens: today's full logits (full+mb1) against the chunked learner,
#       by micro-batch setting, with and without gradient checkpointing of the body.
# Run from the repository root:  PYTHONPATH=src OUT=/some/dir bash benchmarks/gpu_learner.sh
# Needs torch + transformers only. Writes JSON into $OUT after each section (and after each
# variant of (b)), so a run cut short keeps what it measured.
set -uo pipefail
OUT=${OUT:?set OUT to the output directory}
PY=${PYTHON:-python}
# Toy-size dry run on a CPU: DEVICE=cpu PRESET=tiny LENGTH=64 (same code path, small numbers).
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-r1-distill-1.5b}
LENGTH=${LENGTH:-8192}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt"

echo "== (a) correctness on $DEVICE, fp32, toy size"
timeout "${CHECK_TIMEOUT:-60}" "$PY" benchmarks/gpu_learner_check.py --device "$DEVICE" --json "$OUT/learner_check_${DEVICE}.json"
echo "(a) exit $?"

echo "== (b) learner update, $PRESET shape, 4 x (256 + $LENGTH) tokens (bf16 on cuda)"
# 16,896 tokens = 2 rows per micro-batch; 33,792 = all 4 rows in one micro-batch.
timeout "${BENCH_TIMEOUT:-150}" "$PY" -m ngrpo.cli bench learner --preset "$PRESET" --device "$DEVICE" \
  --length "$LENGTH" --prompt-tokens 256 --rows 4 --repeats 2 \
  --variants "chunked+mb1,full+mb1,chunked+tok16896,chunked+mb1+ckpt,chunked+tok33792+ckpt,chunked+mb1+ce67108864" \
  --json "$OUT/learner_${PRESET}_${DEVICE}.json"
echo "(b) exit $?"
