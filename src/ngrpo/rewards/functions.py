"""Training rewards: built-in graders and user functions, weighted and summed.

A reward is named by a spec string (`train.reward`, or each `fn` of `train.rewards`):
- a built-in grader name (`math`, `math_lenient`, `multiple_choice`, `exact`): 1.0 when the
  completion's answer matches the example's gold `answer`, else 0.0 (`ngrpo.rewards.grader`);
- `package.module:function`: imported by name (the module must be importable);
- `path/to/file.py:function`: loaded from that file (a relative path is taken from the working
  directory when the config is loaded);
or it is a Python callable passed to `ngrpo.train(..., reward_funcs=[...])`.

User functions follow TRL's reward-function signature, so TRL reward functions work unchanged:

    def my_reward(completions, prompts=None, completion_ids=None, **columns) -> list[float | None]

`completions` holds one entry per rollout: the decoded text, or, when the dataset's prompt is a
list of chat messages, `[{"role": "assistant", "content": text}]` (TRL's conversational format);
`prompts` holds the matching prompt (text or message list); every other dataset column arrives as a
keyword list aligned with `completions` (e.g. `answer=[...]`, `target=[...]`). A `None` (or NaN)
entry means "not applicable": it adds nothing to that rollout's total and is left out of the
function's mean metric (as TRL does).

The total reward of a rollout is `sum_i weight_i × reward_i`. Metrics: `reward/<name>` is the mean
of component i over the rollouts it applies to (NaN when it applies to none), named after its
function's `__name__` (made unique with `_2`, `_3`, ... when repeated); `reward/mean` is the mean
total. `reward/accuracy` is the share of rollouts that the built-in graders (the correctness
rewards) score 1, every one of them when there are several; it is logged only when the set has a
built-in grader (a user function's reward is not taken for correctness). The trainer adds
`reward/positive_frac`, the share of rollouts whose total is > 0 (equal to `reward/accuracy`
when one grader is the only reward).

Failures are never silent: a function that raises, hangs past its deadline (`train.reward_timeout_s`
per completion, in a worker process: `ngrpo.rewards.user`), allocates past its worker's memory cap
(`train.reward_memory_gb`), returns something other than a list of numbers / None, or a list of
the wrong length raises `NgrpoError` naming the function. With
`train.reward_errors=zero`, a failed call instead gives 0.0 to every rollout of that call, counted
in `reward/<name>/errors` (the number of failed calls this step).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

from ngrpo.rewards.grader import GRADERS, batch_rewards
from ngrpo.rewards.pool import TIMEOUT_S, GradingPool
from ngrpo.rewards.specs import absolute_spec, import_function, spec_of
from ngrpo.rewards.user import (
    MEMORY_BYTES,
    RewardCallError,
    UserRewardWorker,
    picklable_target,
)
from ngrpo.utils.errors import NgrpoError

log = logging.getLogger(__name__)

RESERVED_ARGUMENTS = ("completions", "prompts", "completion_ids")
ERROR_POLICIES = ("raise", "zero")
RESERVED_NAMES = ("mean", "accuracy", "positive_frac", "std_in_group")  # reward/<name> metrics


# --------------------------------------------------------------------------------- components


@dataclass
class RewardComponent:
    """One weighted reward: a built-in grader (`kind`) or a user function (`worker`)."""

    name: str
    weight: float
    spec: str
    kind: str | None = None  # built-in grader name
    worker: UserRewardWorker | None = None


def _unique(name: str, taken: set[str]) -> str:
    unique, i = name, 1
    while unique in taken or unique in RESERVED_NAMES:
        i += 1
        unique = f"{name}_{i}"
    taken.add(unique)
    return unique


@dataclass
class RewardSet:
    """The weighted components of a run; `compute` scores a batch of rollouts."""

    components: list[RewardComponent]
    pool: GradingPool | None = None
    on_error: str = "raise"

    @property
    def needs_answer(self) -> bool:
        """Whether a built-in grader needs the dataset's gold `answer` column."""
        return any(c.kind is not None for c in self.components)

    def start(self) -> None:
        """Start every user worker now: a function that cannot load fails before training."""
        for component in self.components:
            if component.worker is not None:
                component.worker.start()

    def close(self) -> None:
        for component in self.components:
            if component.worker is not None:
                component.worker.close()

    def compute(
        self,
        completions: Sequence[str],
        prompts: Sequence[Any],
        columns: Sequence[Mapping[str, Any]],
        answers: Sequence[str],
        completion_ids: Sequence[Sequence[int]] | None = None,
        values: dict[str, list[float | None]] | None = None,
    ) -> tuple[list[float], dict[str, float]]:
        """(total reward per rollout, metrics) for rollouts aligned with their prompts/columns.

        Metrics: `reward/<name>` per component, `reward/accuracy` when a built-in grader is one
        of them (module docstring).

        `prompts[i]` is rollout i's prompt: a string, or a list of chat messages (then user
        functions receive conversational completions); `columns[i]` its example's dataset
        columns; `answers[i]` its gold answer for the built-in graders. `values`, when given,
        receives each component's unweighted value per rollout by component name (None where a
        function returned None).
        """
        count = len(completions)
        if not (len(prompts) == len(columns) == len(answers) == count):
            raise ValueError("completions, prompts, columns and answers must align")
        totals = [0.0] * count
        correct = [True] * count  # every built-in grader gives 1
        metrics: dict[str, float] = {}
        for component in self.components:
            scores, failed = self._component_values(
                component, completions, prompts, columns, answers, completion_ids
            )
            if component.kind is not None:
                correct = [c and v == 1.0 for c, v in zip(correct, scores, strict=True)]
            if values is not None:
                values[component.name] = list(scores)
            present = [v for v in scores if v is not None]
            metrics[f"reward/{component.name}"] = (
                sum(present) / len(present) if present else float("nan")
            )
            if self.on_error == "zero" and component.worker is not None:
                metrics[f"reward/{component.name}/errors"] = float(failed)
            for i, value in enumerate(scores):
                if value is not None:
                    totals[i] += component.weight * value
        if self.needs_answer and count:
            metrics["reward/accuracy"] = sum(correct) / count
        return totals, metrics

    def _component_values(self, component, completions, prompts, columns, answers, ids):
        if component.kind is not None:
            return batch_rewards(list(completions), list(answers), component.kind, self.pool), 0
        args, kwargs = _trl_arguments(completions, prompts, columns, ids)
        try:
            raw = component.worker.call(args, kwargs, len(completions))
            return _validated(raw, len(completions)), 0
        except RewardCallError as err:
            message = f"reward function {component.name} ({component.spec}) {err}"
            if self.on_error != "zero":
                raise NgrpoError(message) from None
            log.warning(
                "%s; its %d rollouts get 0.0 (train.reward_errors=zero)", message, len(completions)
            )
            return [0.0] * len(completions), 1


def _trl_arguments(completions, prompts, columns, completion_ids):
    conversational = any(isinstance(p, list) for p in prompts)
    texts = (
        [[{"role": "assistant", "content": text}] for text in completions]
        if conversational else list(completions)
    )  # fmt: skip
    kwargs: dict[str, Any] = {"prompts": list(prompts)}
    if completion_ids is not None:
        kwargs["completion_ids"] = [list(map(int, ids)) for ids in completion_ids]
    names = list(dict.fromkeys(name for row in columns for name in row))
    for name in names:
        if name in RESERVED_ARGUMENTS:
            raise NgrpoError(
                f"dataset column {name!r} clashes with a reward-function argument "
                f"({', '.join(RESERVED_ARGUMENTS)}); rename the column"
            )
        kwargs[name] = [row.get(name) for row in columns]
    return (texts,), kwargs


def _validated(raw: Any, count: int) -> list[float | None]:
    """A user function's return value as floats / None, or `RewardCallError` saying why not."""
    if not isinstance(raw, (list, tuple)):
        raise RewardCallError(f"returned {type(raw).__name__}, expected a list of {count} floats")
    if len(raw) != count:
        raise RewardCallError(f"returned {len(raw)} values for {count} completions")
    values: list[float | None] = []
    for i, value in enumerate(raw):
        if value is None:
            values.append(None)
            continue
        if isinstance(value, bool) or not isinstance(value, Real):
            raise RewardCallError(
                f"returned {type(value).__name__} {value!r} at position {i}; expected a float "
                "or None"
            )
        number = float(value)
        if math.isnan(number):
            values.append(None)  # TRL's marker for "not applicable"
        elif math.isinf(number):
            raise RewardCallError(f"returned {number} at position {i}; rewards must be finite")
        else:
            values.append(number)
    return values


def build_reward_set(
    items: Sequence[tuple[str | Callable, float]],
    *,
    pool: GradingPool | None = None,
    timeout_s: float = TIMEOUT_S,
    on_error: str = "raise",
    memory_bytes: int | None = MEMORY_BYTES,
) -> RewardSet:
    """Resolve (spec or callable, weight) pairs: imports are checked here, in the caller's
    process, so a missing module or function fails before any worker starts. `memory_bytes`:
    each user worker's memory cap (`ngrpo.rewards.user`; None: none)."""
    if on_error not in ERROR_POLICIES:
        raise NgrpoError(
            f"train.reward_errors: {on_error!r}; choose one of {', '.join(ERROR_POLICIES)}"
        )
    if not items:
        raise NgrpoError("no reward function: set train.reward or train.rewards")
    components, taken = [], set()
    for spec_or_fn, weight in items:
        if callable(spec_or_fn):
            fn, target = spec_or_fn, picklable_target(spec_or_fn)
            spec = spec_of(fn)
        elif spec_or_fn in GRADERS:
            kind = str(spec_or_fn)
            components.append(RewardComponent(_unique(kind, taken), float(weight), kind, kind=kind))
            continue
        else:
            spec = absolute_spec(str(spec_or_fn))
            fn, target = import_function(spec), spec
        name = _unique(getattr(fn, "__name__", "reward"), taken)
        worker = UserRewardWorker(name, target, timeout_s, memory_bytes)
        components.append(RewardComponent(name, float(weight), spec, worker=worker))
    return RewardSet(components, pool=pool, on_error=on_error)
