"""Two processes (torchrun, gloo) combine their step metrics (`ngrpo.trainer.step._reduce`): the
ratio's extremes are the extremes over the processes that scored a loss token, `actor/ratio_mean`,
the clip fractions, `rollout_correction/*` and the `mismatch/*` means are weighted by their counts,
the counts summed. Used by
tests/test_learner_ddp.py:

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_metrics_check.py
"""

from __future__ import annotations

import math
import sys
from types import SimpleNamespace

from accelerate import Accelerator

from ngrpo.trainer.step import _reduce

# per rank: (ratio min, max, mean, tokens), (mismatch mean, max, tokens), (mixed mean, tokens),
# (clip fraction, correction weight mean, correction tokens)
RANKS = {
    "scored": [((0.9, 1.2, 1.0, 30.0), (0.01, 0.2, 30.0), (0.02, 5.0), (0.1, 0.9, 30.0)),
               ((0.7, 1.1, 0.8, 10.0), (0.05, 0.1, 10.0), (0.0, 0.0), (0.5, 0.5, 10.0))],
    # rank 1 scored nothing (all its rows truncated): its neutral ratio 1 is no extreme
    "one empty": [((1.05, 1.3, 1.2, 8.0), (0.01, 0.2, 8.0), (0.02, 2.0), (0.25, 0.8, 8.0)),
                  ((1.0, 1.0, 1.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0), (0.0, 0.0, 0.0))],
}  # fmt: skip
EXPECT = {
    "scored": {"actor/ratio_min": 0.7, "actor/ratio_max": 1.2, "actor/ratio_mean": 0.95,
               "actor/ratio_tokens": 40.0, "mismatch/logp_abs_mean": 0.02,
               "mismatch/logp_abs_max": 0.2, "mismatch/tokens": 40.0,
               "mismatch/mixed/logp_abs_mean": 0.02, "mismatch/mixed/tokens": 5.0,
               "loss/pg": 1.5, "actor/clip_frac": 0.2, "rollout_correction/weight_mean": 0.8,
               "rollout_correction/tokens": 40.0},
    "one empty": {"actor/ratio_min": 1.05, "actor/ratio_max": 1.3, "actor/ratio_mean": 1.2,
                  "actor/ratio_tokens": 8.0, "mismatch/logp_abs_mean": 0.01,
                  "mismatch/logp_abs_max": 0.2, "mismatch/tokens": 8.0,
                  "mismatch/mixed/logp_abs_mean": 0.02, "mismatch/mixed/tokens": 2.0,
                  "loss/pg": 1.5, "actor/clip_frac": 0.25, "rollout_correction/weight_mean": 0.8,
                  "rollout_correction/tokens": 8.0},
}  # fmt: skip


def main() -> int:
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    run = SimpleNamespace(accelerator=accelerator)
    for case, ranks in RANKS.items():
        (low, high, mean, tokens), (gap, gap_max, measured), (mixed, mixed_n), (
            clipped, weight, corrected) = ranks[rank]  # fmt: skip
        metrics = {
            "actor/ratio_min": low, "actor/ratio_max": high, "actor/ratio_mean": mean,
            "actor/ratio_tokens": tokens, "mismatch/logp_abs_mean": gap,
            "mismatch/logp_abs_max": gap_max, "mismatch/tokens": measured,
            "mismatch/mixed/logp_abs_mean": mixed, "mismatch/mixed/tokens": mixed_n,
            "loss/pg": float(rank + 1), "actor/clip_frac": clipped,
            "rollout_correction/weight_mean": weight, "rollout_correction/tokens": corrected,
        }  # fmt: skip
        got = _reduce(run, metrics)
        for key, value in EXPECT[case].items():
            if not math.isclose(got[key], value, rel_tol=1e-12, abs_tol=1e-15):
                raise SystemExit(f"rank {rank}, {case}: {key} = {got[key]}, expected {value}")
    print(f"rank {rank}: ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
