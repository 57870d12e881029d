"""Data parallelism's pure arithmetic: the global loss normaliser and world-size-invariant
rollout seeds (used by `ngrpo.learner.update` and `ngrpo.trainer` under DDP and FSDP alike).

- The loss normaliser of a mini-batch (its token or sequence count,
  `ngrpo.method.losses.loss_normalizer`) is summed over the processes, and each process divides by
  that global count over the world size (i.e. its loss is scaled by the world size). Data
  parallelism averages gradients over processes, so the average equals the gradient of one process
  holding the whole mini-batch: Σ_r Σ_{i∈r} g_i / N_global — exactly, not the per-process token mean
  averaged (the usual DDP approximation).
- Each process takes its slice of every mini-batch of the step's prompts
  (`process_prompt_slots`), so its k-th mini-batch is its part of the global k-th one.
- A step's rollouts are generated in generation batches of whole prompts, each with its own seed
  from (seed, step, round, global index of its first prompt): the same prompts get the same seed
  whichever process generates them, so the rollouts do not depend on the world size as long as
  every process's slice of a mini-batch is a whole number of generation batches.
"""

from __future__ import annotations

from collections.abc import Callable


def global_loss_normalizer(
    local_count: float, world: int, sum_over_processes: Callable[[float], float]
) -> float:
    """The normaliser to pass to this process's micro-batches: (Σ over processes of the
    mini-batch's token / sequence count, at least 1) / `world`. `local_count` is this process's
    raw count (not clamped to 1: a process with no tokens adds 0); `sum_over_processes` all-reduces
    a number (identity in one process)."""
    total = sum_over_processes(float(local_count)) if world > 1 else float(local_count)
    return max(total, 1.0) / world


def rollout_seed(seed: int, step: int, round_: int, first_prompt: int) -> int:
    """The seed of a generation batch whose first prompt has global index `first_prompt` in the
    step's (round's) prompt list. `first_prompt=0` gives the seed one process always used for its
    whole step (so a 1-process run with `rollout.generation_batch_size: null` is unchanged)."""
    return (seed * 1_000_003 + step) * 1_009 + round_ * 104_729 + first_prompt * 1_000_000_007


def generation_batches(
    prompts: int, num_generations: int, generation_batch_size: int | None
) -> list[tuple[int, int]]:
    """(first local prompt, prompt count) of each generation batch of a process's `prompts`:
    `generation_batch_size // num_generations` prompts each when the batch size is set and holds
    whole groups, else one batch of all of them (the engine then splits rows by
    `generation_batch_size` inside it, as before)."""
    if not generation_batch_size or generation_batch_size % num_generations:
        return [(0, prompts)]
    per = max(1, generation_batch_size // num_generations)
    return [(start, min(per, prompts - start)) for start in range(0, prompts, per)]


def process_prompt_slots(
    prompts_per_step: int, mini_batch_prompts: int, world: int, rank: int
) -> list[int]:
    """Positions in the step's prompt order that process `rank` rolls out and learns from: its
    slice of every mini-batch (mini-batch k's prompts k·M .. k·M + M − 1 split into `world`
    contiguous slices). The process's k-th local mini-batch is then its part of the global k-th,
    so N processes take the optimizer steps of one process (for any number of mini-batches per
    step). One process: `range(prompts_per_step)`."""
    share = mini_batch_prompts // world
    return [
        start + rank * share + i
        for start in range(0, prompts_per_step, mini_batch_prompts)
        for i in range(share)
    ]
