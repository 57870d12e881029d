"""One training step, top to bottom in `_train_step`: this process's prompts -> rollouts with
exploration on (`ngrpo.rollout.generate`) -> rewards (`ngrpo.rewards.functions.RewardSet`) ->
group advantages (`ngrpo.method.losses.group_advantages`) -> policy update
(`ngrpo.learner.update.update_policy`) -> metrics reduced over processes. With
`train.dynamic_sampling` `ngrpo.trainer.dynamic_sampling.collect` draws several rounds of prompts
per step and only groups whose rewards vary are trained on (on several processes too: every
round is gathered whole, so all processes keep the groups one process would).

Several processes: the mini-batch's loss normaliser (token or sequence count) is summed over
processes and each process's loss scaled by the world size, so the averaged gradient is exactly the
global token (or sequence) mean of one process holding the whole mini-batch. Rollouts are world-size
invariant: each generation batch (`rollout.generation_batch_size` rows of whole groups; with
`null` a process's whole share) gets its own seed from (seed, step, round, global index of its
first prompt), and each process takes its slice of every mini-batch of the step's prompts
(`ngrpo.sharding.data_parallel.process_prompt_slots`), so N processes produce one process's
rollouts and optimizer steps when each process's slice of a mini-batch is a whole number of
generation batches (a 1-process run with `generation_batch_size: null` keeps its old seeds).
Metrics are averaged over processes, totals, throughputs and error counts (`SUMMED_METRICS`,
`reward/<name>/errors`) summed, ratios (`rollout/mixed_frac`, `embed_shift`, `neighbor_weight`)
weighted by each process's count (`ngrpo.rollout.batch.WEIGHTED_STATS`), `memory/peak_bytes` the
largest (`MAX_METRICS`), and `train/world_size` is logged.

Stop requests: each generation batch and each round's rewards run inside a `SafePoints.region`, a
check follows each round, and `update_policy` has its own safe points up to its first optimizer
step; a stop there raises `StepAbandoned` out of `_train_step` (`ngrpo.trainer.safe_point`).
"""

from __future__ import annotations

import time

import torch

from ngrpo.learner.averages import TOKEN_MEANS
from ngrpo.learner.update import MAX_KEYS, MIN_KEYS, RATIO_TOKENS, WEIGHTED_KEYS, update_policy
from ngrpo.rollout.batch import WEIGHTED_STATS
from ngrpo.trainer.oom import oom_retry
from ngrpo.trainer.reporting import completions_due
from ngrpo.trainer.safe_point import NO_STOP, SafePoints
from ngrpo.trainer.setup import Run, engine_options
from ngrpo.utils.oom import oom_phase

# Metrics summed over processes (totals and throughputs); every other metric is averaged.
SUMMED_METRICS = (
    "rollout/tokens", "rollout/mixed_tokens", "rollout/tokens_per_s", "learner/tokens_per_s",
    "rollout/eligible_tokens", "rollout/embed_shift_tokens",
)  # fmt: skip
SUMMED_SUFFIXES = ("/errors",)  # counts: reward/<name>/errors
# The learner's extremes over micro-batches (MIN_KEYS / MAX_KEYS) stay extremes over processes.
MAX_METRICS = (  # the largest over processes: what must fit on each, the worst gap
    *MAX_KEYS, "memory/peak_bytes", "actor/replay_logp_err", "mismatch/logp_abs_max",
    "mismatch/seq_log_ratio_abs_max", "mismatch/mixed/logp_abs_max",
)  # fmt: skip
MIN_METRICS = MIN_KEYS  # the smallest over processes


def _reduce(run: Run, metrics: dict[str, float]) -> dict[str, float]:
    """Metrics over all processes: sums for `SUMMED_METRICS` and the counts of `WEIGHTED_KEYS`,
    means weighted by those counts for `WEIGHTED_KEYS`, maxima for `MAX_METRICS`, minima for
    `MIN_METRICS` (the ratio's over the processes that scored a loss token), means for the rest
    (identity in a single process). Every process must hold the same keys (they do: same code,
    same config)."""
    world = run.accelerator.num_processes
    if world == 1:
        return metrics
    keys = sorted(metrics)
    values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64)
    gathered = run.accelerator.gather(values.to(run.accelerator.device)).view(world, -1).cpu()
    return _combine(keys, gathered)


def _combine(keys: list[str], gathered: torch.Tensor) -> dict[str, float]:
    """`_reduce`'s rule over the processes' values (world, len(keys)), float64."""
    column = {key: gathered[:, i] for i, key in enumerate(keys)}
    weighted = {**WEIGHTED_KEYS, **WEIGHTED_STATS}  # mean key -> the count it is a mean over
    counts = set(weighted.values())
    scored = column[RATIO_TOKENS] > 0 if RATIO_TOKENS in column else None  # (world,)
    out = {}
    for key, x in column.items():
        if key in (*MIN_KEYS, *MAX_KEYS) and scored is not None and bool(scored.any()):
            x = x[scored]  # a process without loss tokens has no ratio (it reports 1)
        if key in weighted and weighted[key] in column:
            weight, total = column[weighted[key]], float(column[weighted[key]].sum())
            empty = TOKEN_MEANS.get(key, 0.0)  # nothing measured anywhere
            out[key] = float((x * weight).sum()) / total if total > 0 else empty
        elif key in MAX_METRICS:
            out[key] = float(x.max())
        elif key in MIN_METRICS:
            out[key] = float(x.min())
        elif key in SUMMED_METRICS or key in counts or key.endswith(SUMMED_SUFFIXES):
            out[key] = float(x.sum())
        else:
            out[key] = float(x.sum()) / len(x)
    return out


def weights_changed(run: Run) -> float:
    """Tell every derived copy of the weights that the optimizer stepped (call after each
    update; returns the rollout copy's refresh time in seconds): the FSDP rollout copy takes the
    new full parameters, the kept decoder copies its compute-dtype weights again and the
    neighbour index drops its cache unless its table is frozen (LoRA). Told, not detected: fused
    AdamW (CUDA) writes parameters without bumping their version counter, which the copies would
    otherwise watch."""
    seconds = 0.0
    if run.sharded:
        started = time.perf_counter()
        run.rollout_copy.refresh()
        seconds = time.perf_counter() - started
    if run.decoders is not None:
        run.decoders.weights_changed()
    if run.neighbor_index is not None and _trained(run, run.neighbor_index.table()):
        run.neighbor_index.invalidate()
    return seconds


def _trained(run: Run, table: torch.Tensor) -> bool:
    """Whether the optimizer writes `table` (under FSDP the rollout copy's tables are rewritten
    after every update)."""
    groups = run.optimizer.param_groups
    return run.sharded or any(p is table for group in groups for p in group["params"])


# ------------------------------------------------------------------------------------ one step


def _rollout_round(
    run: Run, indices: list[int], round_: int, reward_metrics: list[dict],
    slots: list[int] | None = None, points: SafePoints = NO_STOP,
    reward_values: dict | None = None,
):  # fmt: skip
    """Rollouts with exploration on for this process's prompt `indices`, and their rewards.

    Returns (batch, texts, rewards (N,)) and appends the round's reward metrics to
    `reward_metrics`. `slots`: each prompt's position in the round's global prompt list (default
    0, 1, ...). Each generation batch is seeded from (seed, step, round, global position of its
    first prompt) (`ngrpo.sharding.data_parallel`), so rollouts do not depend on the world size.
    `points`: a stop request inside a generation batch or the rewards abandons the step, and the
    safe point after the rewards agrees on it over processes.
    `reward_values` (a dict) receives each reward function's value per rollout."""
    from ngrpo.evaluation import eos_token_ids
    from ngrpo.rollout import SamplingParams, generate
    from ngrpo.rollout.batch import concat_batches
    from ngrpo.sharding.data_parallel import generation_batches, rollout_seed

    cfg, acc = run.cfg, run.accelerator
    # the tokenizer's EOS and the generation config's (a chat model's end of turn), as evaluation
    eos = eos_token_ids(run.policy, run.tokenizer)
    exploration = _step_exploration(run)
    first = list(range(len(indices))) if slots is None else slots
    parts = []
    batches = generation_batches(
        len(indices), cfg.rollout.num_generations, cfg.rollout.generation_batch_size
    )
    for number, (start, count) in enumerate(batches, start=1):
        prompts = [run.prompts[i] for i in indices[start : start + count]]
        rows, width = count * cfg.rollout.num_generations, max(map(len, prompts))
        shape = (f"generation batch {number} of {len(batches)}: {rows} rows × ({width} prompt + "
                 f"up to {cfg.rollout.max_completion_length} new) tokens")  # fmt: skip
        with acc.autocast(), oom_phase("rollout", shape, rows), points.region("rollout"):
            parts.append(generate(
                run.policy, prompts,
                SamplingParams(
                    n=cfg.rollout.num_generations, temperature=cfg.rollout.temperature,
                    top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k,
                    max_new_tokens=cfg.rollout.max_completion_length,
                ),
                eos_token_id=eos, pad_token_id=run.tokenizer.pad_token_id,
                exploration=exploration, answer_start_ids=run.answer_start_ids,
                training=True, seed=rollout_seed(cfg.seed, run.step, round_, first[start]),
                batch_size=cfg.rollout.generation_batch_size, neighbor_index=run.neighbor_index,
                engine=engine_options(cfg),
                decoders=run.decoders,
            ))  # fmt: skip
    batch = concat_batches(parts, run.tokenizer.pad_token_id)
    # weighted reward components (built-in graders and user functions)
    response_ids = batch.responses()
    texts = [run.tokenizer.decode(r, skip_special_tokens=True) for r in response_ids]
    examples = [run.examples[indices[int(i)]] for i in batch.prompt_index]
    with points.region("rewards"):
        totals, metrics = run.rewards.compute(
            texts, [e.prompt for e in examples], [e.columns for e in examples],
            [e.answer for e in examples], response_ids, values=reward_values,
        )  # fmt: skip
    points.check("rewards")  # on every process: a stop request anywhere abandons the step here
    reward_metrics.append(metrics)
    return batch, texts, torch.tensor(totals)  # (N,)


def _step_exploration(run: Run):
    """`cfg.exploration` with this step's mix rate (`exploration.mix_rate_schedule`)."""
    import dataclasses

    from ngrpo.method.exploration import scheduled_mix_rate

    cfg = run.cfg.exploration
    rate = scheduled_mix_rate(cfg, run.step, run.cfg.train.steps)
    return cfg if rate == cfg.mix_rate else dataclasses.replace(cfg, mix_rate=rate)


def _embedding_drift(run: Run) -> float:
    """‖E − E₀‖ / ‖E₀‖ of the input-embedding table, E₀ the table the run started from: the frozen
    KL reference's (`train.beta > 0`, no LoRA, one process), so a resumed run measures from the
    same start; else a copy of the table when this process's first step began. Logged on the
    embedded task only."""
    table = run.policy.get_input_embeddings().weight.detach()
    if run.embed_start is None:
        ref = run.ref_model
        frozen = ref is not None and not run.cfg.model.lora.enabled and not run.sharded
        run.embed_start = ref.get_input_embeddings().weight.detach() if frozen else table.clone()
    start = run.embed_start
    return float((table.float() - start.float()).norm() / start.float().norm().clamp_min(1e-12))


def _merge_round_metrics(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Reward-component metrics of a step's rollout rounds: error counts summed, means averaged
    over rounds (dynamic sampling: every round drawn, not only the kept groups)."""
    merged: dict[str, float] = {}
    for key in rounds[0]:
        values = [r[key] for r in rounds if key in r]
        merged[key] = sum(values) if key.endswith("/errors") else sum(values) / len(values)
    return merged


def _dynamic_rollouts(
    run: Run, reward_metrics: list[dict], points: SafePoints, reward_values: dict
):
    """DAPO dynamic sampling: `ngrpo.trainer.dynamic_sampling.collect` with this run's sampler and
    rollouts. Several processes: each rolls out a contiguous share of every round's prompts, the
    rounds are gathered whole (every process chooses the groups one process would), and each
    learns from its `learner_slots` of the merged groups. `reward_values` receives each reward
    function's value per row of the returned batch."""
    from ngrpo.trainer.dynamic_sampling import collect, learner_slots

    cfg, acc = run.cfg, run.accelerator
    world, rank, need = acc.num_processes, acc.process_index, cfg.train.prompts_per_step
    group = cfg.rollout.num_generations
    share = list(range(rank * need // world, (rank + 1) * need // world))

    def rollout(indices, round_):
        values: dict = {}  # this round's per-function values, which `collect` selects from
        batch, texts, rewards = _rollout_round(
            run, [indices[i] for i in share], round_, reward_metrics,
            slots=share, points=points, reward_values=values,
        )  # fmt: skip
        return batch, texts, rewards, values

    def gather(obj) -> list:
        out = [None] * world
        torch.distributed.all_gather_object(out, obj)
        return out

    batch, texts, rewards, metrics = collect(
        run.sampler.take, rollout, need=need, group_size=group,
        max_rounds=cfg.train.max_sampling_rounds, pad_token_id=run.tokenizer.pad_token_id,
        gather=gather if world > 1 else None, values=reward_values,
    )  # fmt: skip
    if world == 1:
        return batch, texts, rewards, metrics
    groups = len(rewards) // group
    # fewer groups than processes (a step at the round cap): every process learns from all of
    # them (the global normaliser counts each copy, so while they fit one local mini-batch the
    # averaged gradient is the one-process one)
    slots = learner_slots(groups, cfg.train.mini_batch_prompts, world, rank) or list(range(groups))
    rows = [s * group + j for s in slots for j in range(group)]
    for name, per_row in reward_values.items():
        reward_values[name] = [per_row[r] for r in rows]
    stats = batch.stats
    batch = batch.select(torch.tensor(rows, device=batch.prompt_ids.device))
    batch.stats = stats
    return batch, [texts[r] for r in rows], rewards[rows], metrics


def _train_step(run: Run, points: SafePoints = NO_STOP) -> dict[str, float]:
    """One step (the module); `points`: where a stop request abandons it, raising
    `StepAbandoned` (`ngrpo.trainer.safe_point`). `run.completions` gets its completion rows
    when they are due (`ngrpo.trainer.reporting.completions_due`), else None."""
    from ngrpo.evaluation.diagnostics import (
        neighbor_synonym_frac,
        rollout_diagnostics,
        split_groups,
    )
    from ngrpo.memory.usage import peak_bytes, reset_peak
    from ngrpo.method.losses import group_advantages
    from ngrpo.sharding.data_parallel import process_prompt_slots

    cfg, acc = run.cfg, run.accelerator
    world, rank = acc.num_processes, acc.process_index
    reset_peak(acc.device)  # `memory/peak_bytes`: this step's peak, rollout to optimizer step
    # 1-2. this process's slice of each mini-batch of the step's prompts (the same global order
    # for every process),
    # rollouts with exploration on and their rewards (dynamic sampling: several rounds)
    if run.canonicalize is not None and run.embed_start is None:
        _embedding_drift(run)  # the embedded task: keep the table the drift is measured from
    started, round_metrics, reward_values = time.perf_counter(), [], {}
    if cfg.train.dynamic_sampling:
        batch, texts, rewards, sampling_metrics = _dynamic_rollouts(
            run, round_metrics, points, reward_values
        )
    else:
        indices = run.sampler.take(cfg.train.prompts_per_step)
        slots = process_prompt_slots(
            cfg.train.prompts_per_step, cfg.train.mini_batch_prompts, world, rank
        )  # this process's slice of every mini-batch
        batch, texts, rewards = _rollout_round(
            run, [indices[i] for i in slots], 0, round_metrics, slots=slots, points=points,
            reward_values=reward_values,
        )  # fmt: skip
        sampling_metrics = {}
    rollout_s = time.perf_counter() - started
    reward_metrics = _merge_round_metrics(round_metrics)
    # 3. group-normalised advantages
    groups = rewards.view(-1, cfg.rollout.num_generations)  # (P, G)
    advantages = group_advantages(groups, scale=cfg.train.scale_rewards).reshape(-1)  # (N,)
    # 4. policy update on the recorded inputs
    started = time.perf_counter()
    learner = update_policy(
        run.model, run.optimizer, run.scheduler, batch, advantages.to(batch.logprobs.device),
        run.params, ref_model=run.ref_model, accelerator=acc, ref_context=run.ref_context,
        on_oom=oom_retry(run),  # train.oom_retry: a smaller token budget (kept in run.params)
        safe_points=points,  # up to the first optimizer step
    )  # fmt: skip
    refresh_s = weights_changed(run)
    learner_s = time.perf_counter() - started
    trained_tokens = float(batch.response_mask.sum()) * cfg.train.num_iterations  # × PPO epochs
    metrics = {
        "reward/mean": float(rewards.mean()),
        # the total's share > 0; `reward/accuracy` (the built-in graders' share of 1) comes with
        # the reward components (`ngrpo.rewards.functions`)
        "reward/positive_frac": float((rewards > 0).float().mean()),
        "reward/std_in_group": float(groups.std(dim=1).mean()) if groups.shape[1] > 1 else 0.0,
        **reward_metrics,
        **{k: v for k, v in batch.stats.items() if k != "rollout/seconds"},
        **sampling_metrics,
        **learner,
        **rollout_diagnostics(
            split_groups(texts, cfg.rollout.num_generations),
            groups.tolist(),
            batch.stats,
            canonicalize=run.canonicalize,
        ),
        "time/rollout_s": rollout_s,
        "time/generate_s": batch.stats["rollout/seconds"],
        "time/learner_s": learner_s,
        "time/rollout_copy_s": refresh_s,
        "learner/tokens_per_s": trained_tokens / max(learner_s, 1e-9),
        "train/lr": run.scheduler.get_last_lr()[0],
        "memory/peak_bytes": float(peak_bytes(acc.device)),
    }
    if cfg.exploration.enabled:
        metrics["exploration/mix_rate"] = _step_exploration(run).mix_rate
    if run.canonicalize is not None:  # the embedded task
        metrics["embedding/drift"] = _embedding_drift(run)
    if run.variant_classes is not None:
        response_ids = batch.soft_inputs.ids[:, batch.prompt_ids.shape[1] :]  # (N, T, K)
        metrics["rollout/neighbor_synonym_frac"] = neighbor_synonym_frac(
            response_ids, batch.mixed, run.variant_classes
        )
    run.completions = None
    if completions_due(cfg, run.step + 1):  # every process's rows, written by rank 0
        from ngrpo.tracking.completions import completion_rows

        rows = completion_rows(
            batch, texts, rewards.tolist(), advantages.tolist(), run.tokenizer, run.step + 1,
            reward_values=reward_values, group_size=cfg.rollout.num_generations,
        )  # fmt: skip
        run.completions = _gathered_rows(run, rows)
    return {**_reduce(run, metrics), "train/world_size": float(world)}


def _gathered_rows(run: Run, rows: list[dict]) -> list[dict] | None:
    """Every process's completion rows on rank 0 (None elsewhere), in rank order, their groups
    numbered on across processes (one gather to rank 0 on the wait group, as the evaluation's;
    every process calls it at the same step)."""
    acc = run.accelerator
    if acc.num_processes == 1:
        return rows
    parts: list | None = [None] * acc.num_processes if acc.is_main_process else None
    torch.distributed.gather_object(rows, parts, dst=0, group=run.waits)
    if parts is None:
        return None
    out, groups = [], 0
    for part in parts:
        out += [{**row, "group": row["group"] + groups} for row in part]
        groups += 1 + max((row["group"] for row in part), default=-1)
    return out
