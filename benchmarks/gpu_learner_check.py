"""Learner correctness on a device (CUDA), fp32, toy size: chunked scoring == full logits
(values, entropy, gradients) and token-budget micro-batches == one micro-batch (the update).

Usage (repository root): PYTHONPATH=src python benchmarks/gpu_learner_check.py --device cuda \
    --json OUT.json. Prints one line per check and writes the JSON; exit status 1 if any check
misses its tolerance (1e-5, as the CPU tests)."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from ngrpo.bench.learner import synthetic_rollouts, vocab_model
from ngrpo.learner.scoring import score_tokens
from ngrpo.learner.update import LearnerParams, update_policy

TOLERANCE = 1e-5


def _varied(batch):
    """Give rows different prompt and response lengths (left prompt padding, right padding)."""
    for row in range(batch.prompt_mask.shape[0]):
        cut_p, keep_t = row % 3 * 5, batch.response_mask.shape[1] - row * 7
        batch.prompt_mask[row, :cut_p] = 0
        batch.response_mask[row, keep_t:] = 0
    return batch


def _scores_and_grads(model, batch, chunk):
    model.zero_grad(set_to_none=True)
    logp, entropy = score_tokens(model, batch, 0.8, chunk_elements=chunk,
                                 full_logits=chunk is None)  # fmt: skip
    mask = batch.response_mask.float()
    weights = torch.linspace(-1, 1, logp.numel(), device=logp.device).view_as(logp)
    (((weights * logp + 0.3 * entropy) * mask).sum() / mask.sum()).backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters()])
    return logp.detach(), entropy.detach(), grad


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device(args.device)
    model = vocab_model(5_000, device, torch.float32).train()
    batch = _varied(synthetic_rollouts(model, 6, 24, 40, k=3, mix_rate=0.3))
    mask = batch.response_mask.bool()
    report: dict = {"device": str(device) if device.type != "cuda"
                    else torch.cuda.get_device_name(device), "torch": torch.__version__,
                    "tolerance": TOLERANCE, "checks": {}}  # fmt: skip
    logp, entropy, grad = _scores_and_grads(model, batch, None)
    for chunk in (1, 7 * 5_000, 10**9):
        logp_c, entropy_c, grad_c = _scores_and_grads(model, batch, chunk)
        report["checks"][f"chunk_{chunk}"] = {
            "logp_max_abs_diff": float((logp_c - logp)[mask].abs().max()),
            "entropy_max_abs_diff": float((entropy_c - entropy)[mask].abs().max()),
            "grad_max_abs_diff": float((grad_c - grad).abs().max()),
            "grad_max_abs": float(grad.abs().max()),
        }
    advantages = torch.linspace(-1, 1, 6, device=device)
    states = []
    for kw in ({"micro_batch_size": 6}, {"max_tokens_per_micro_batch": 130},
               {"max_tokens_per_micro_batch": 1}):  # fmt: skip
        fresh = vocab_model(5_000, device, torch.float32).train()
        optimizer = torch.optim.SGD(fresh.parameters(), lr=1.0)
        fields = {"micro_batch_size": 1, **kw}
        params = LearnerParams(group_size=6, mini_batch_groups=1, max_grad_norm=None,
                               entropy_coef=0.01, **fields)  # fmt: skip
        update_policy(fresh, optimizer, None, batch, advantages, params)
        states.append(torch.cat([p.detach().flatten() for p in fresh.parameters()]))
    start = torch.cat([p.detach().flatten() for p in vocab_model(5_000, device).parameters()])
    report["checks"]["token_budget_update"] = {
        "weights_max_abs_diff_budget_130": float((states[1] - states[0]).abs().max()),
        "weights_max_abs_diff_budget_1": float((states[2] - states[0]).abs().max()),
        "update_max_abs": float((states[0] - start).abs().max()),
    }
    ok = True
    for name, check in report["checks"].items():
        diffs = {k: v for k, v in check.items() if "diff" in k}
        passed = all(v <= TOLERANCE for v in diffs.values())
        check["pass"] = passed
        ok = ok and passed
        print(f"check {name}: {'ok' if passed else 'MISS'} {check}", flush=True)
    report["pass"] = ok
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
