"""The training loop: prompts -> rollouts -> rewards -> advantages -> updates -> eval -> saves.

`train(cfg)` runs a whole GRPO / N-GRPO run from a `TrainConfig` (see `ngrpo.config`); the step
reads top to bottom in `ngrpo.trainer.step._train_step`. Pieces it composes:
`ngrpo.rollout.generate` (exploration on), `ngrpo.rewards.functions.RewardSet` (built-in graders
and user functions, weighted), `ngrpo.method.losses.group_advantages`,
`ngrpo.learner.update.update_policy`, `ngrpo.evaluation.evaluate` (exploration off),
`ngrpo.evaluation.diagnostics` (diversity of each step's groups), and with `train.dynamic_sampling`
`ngrpo.trainer.dynamic_sampling.collect` (several rounds of prompts per step, only groups whose
rewards vary are trained on; single process only).

Parts (each imports only those above it):
- `dynamic_sampling`: DAPO's dynamic sampling (keep the groups whose rewards vary, merge rounds);
- `checkpoints`: checkpoint directories, model and trainer-state save (1-process and sharded, via
  `ngrpo.utils.io`'s atomic writes) / load, recovery after an interruption, RNG state;
- `prompts`: the deterministic prompt order (`PromptSampler`) and prompt encoding;
- `setup`: the `Run` record and `_setup` in named steps (rewards, model and LoRA through
  `ngrpo.models.load.load_policy`, reference, strategy, optimizer, data, neighbour index, resumed
  state); the DDP / FSDP strategies are described there;
- `oom`: out of memory during a step: the one-line error (phase, shape, device memory, `ngrpo
  plan`'s estimate, settings) and `train.oom_retry`'s smaller token budget;
- `stop`: SIGTERM / SIGUSR1 / SIGINT during `train`: stop at the next safe point with a
  checkpoint (every process at the same point); a second signal leaves at once;
- `safe_point`: where a step may be dropped on a stop request (before its first optimizer step)
  and the state at its start that is then saved;
- `step`: one training step (rollout rounds, advantages, update, metrics reduced over processes);
- `loop`: `train` (evaluations, `best/`, checkpoints, logging, stopping), `load_run_config`,
  `read_metrics`;
- `export`: a run's checkpoint as a standalone Hugging Face model directory (`ngrpo export`).
Patch a name where it is looked up: `ngrpo.trainer.loop._setup` / `._train_step`,
`ngrpo.trainer.step.update_policy` (they are deliberately not re-exported here, so a patch of the
old `ngrpo.trainer._train_step` fails instead of silently doing nothing).

Run directory (`output_dir`):
- `config.yaml`: the resolved configuration;
- `metrics.jsonl`: one line per training step (`{"step": s, "type": "train", ...}`) and one per
  evaluation (`"type": "eval"`), flat namespaced keys (`reward/mean`, `loss/pg`, `eval/arith-id/
  pass@1`, ...);
- `checkpoints/step-NNNNNN/`: the model + tokenizer and `trainer_state.pt` (`checkpoints`);
- `best/`: the model with the best `eval.best_metric` so far (`loop`).
Resume (`resume=True`) continues from the newest complete checkpoint so that 2 + 2 steps equal 4
straight steps (`checkpoints`). Several processes (torchrun) each roll out their slice of a step's
prompts; gradients, rollouts and metrics are world-size invariant (`setup`, `step`).
"""

from ngrpo.trainer.checkpoints import (
    CHECKPOINTS,
    STATE_FILE,
    STATE_KEYS,
    checkpoint_dirs,
    load_trainer_state,
    save_checkpoint,
)
from ngrpo.trainer.loop import Progress, load_run_config, read_metrics, train
from ngrpo.trainer.prompts import PromptSampler, encode_prompts
from ngrpo.trainer.setup import Run
from ngrpo.trainer.step import MAX_METRICS, SUMMED_METRICS

__all__ = [
    "CHECKPOINTS",
    "MAX_METRICS",
    "STATE_FILE",
    "STATE_KEYS",
    "SUMMED_METRICS",
    "Progress",
    "PromptSampler",
    "Run",
    "checkpoint_dirs",
    "encode_prompts",
    "load_run_config",
    "load_trainer_state",
    "read_metrics",
    "save_checkpoint",
    "train",
]
