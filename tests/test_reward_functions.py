"""User reward functions: specs, TRL signature, weights and metrics, and every way one can fail."""

from __future__ import annotations

import math
import sys
import textwrap
import time

import pytest

from ngrpo.config import load_config
from ngrpo.rewards import GradingPool
from ngrpo.rewards.functions import build_reward_set
from ngrpo.rewards.specs import check_spec
from ngrpo.utils.errors import NgrpoError

USER_MODULE = """
import os
import time


def format_ok(completions, **kwargs):
    return [1.0 if "\\\\boxed" in c else 0.0 for c in completions]


def uses_target(completions, target, prompts, completion_ids, **kwargs):
    assert len(prompts) == len(completion_ids) == len(completions)
    return [float(str(t) in c) for c, t in zip(completions, target)]


def boom(completions, **kwargs):
    raise ValueError("bad input")


def hang(completions, **kwargs):
    time.sleep(60)


def short(completions, **kwargs):
    return [1.0]


def strings(completions, **kwargs):
    return ["1"] * len(completions)


def infinite(completions, **kwargs):
    return [float("inf")] * len(completions)


def die(completions, **kwargs):
    os._exit(3)


def maybe(completions, **kwargs):
    return [None if "skip" in c else 0.5 for c in completions]


def chat_length(completions, prompts, **kwargs):
    assert prompts[0][-1]["role"] == "user"
    return [float(len(c[0]["content"].split())) for c in completions]


def hog(completions, **kwargs):
    held = []
    while True:  # allocates without bound, 64 MB at a time (each touched: real memory)
        held.append(bytearray(64 * 10**6))


def signals_ignored(completions, **kwargs):
    import signal

    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
    ignored = all(signal.getsignal(s) == signal.SIG_IGN for s in stops)
    return [float(ignored)] * len(completions)
"""

COMPLETIONS = ["so \\boxed{7}", "7 apples", "skip this"]
PROMPTS = ["p1", "p2", "p3"]
COLUMNS = [{"target": 7, "answer": "7"}, {"target": 8, "answer": "8"}, {"target": 9, "answer": "9"}]
ANSWERS = ["7", "8", "9"]
IDS = [[1, 2], [3], [4, 5, 6]]


@pytest.fixture(scope="module")
def user_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "my_rewards.py"
    path.write_text(textwrap.dedent(USER_MODULE))
    return path


@pytest.fixture(scope="module")
def pool():
    with GradingPool(num_workers=1) as grading_pool:
        yield grading_pool


def _compute(items, pool, **kwargs):
    rewards = build_reward_set(items, pool=pool, **kwargs)
    try:
        return rewards.compute(COMPLETIONS, PROMPTS, COLUMNS, ANSWERS, IDS)
    finally:
        rewards.close()


def test_file_functions_and_builtin_weighted_with_columns_and_metrics(user_file, pool):
    totals, metrics = _compute(
        [("math", 1.0), (f"{user_file}:format_ok", 0.2), (f"{user_file}:uses_target", 0.5)], pool
    )
    # math: only "\boxed{7}" vs gold 7 is right; format: the first only; target: 7 in #1, none else
    assert totals == pytest.approx([1.0 + 0.2 + 0.5, 0.0, 0.0])
    assert metrics == pytest.approx(
        {"reward/math": 1 / 3, "reward/format_ok": 1 / 3, "reward/uses_target": 1 / 3,
         "reward/accuracy": 1 / 3}  # the grader's share of correct answers
    )  # fmt: skip


def test_module_function_spec_and_repeated_names_are_made_unique(user_file, pool, monkeypatch):
    monkeypatch.syspath_prepend(str(user_file.parent))
    monkeypatch.delitem(sys.modules, "my_rewards", raising=False)
    totals, metrics = _compute([("my_rewards:format_ok", 1.0), (f"{user_file}:format_ok", 2.0)],
                               pool)  # fmt: skip
    assert totals == [3.0, 0.0, 0.0]
    assert set(metrics) == {"reward/format_ok", "reward/format_ok_2"}


def test_none_means_not_applicable(user_file, pool):
    totals, metrics = _compute([(f"{user_file}:maybe", 2.0), ("math", 1.0)], pool)
    assert totals == [2.0, 1.0, 0.0]  # the None adds nothing
    assert metrics["reward/maybe"] == 0.5  # mean over the two applicable rollouts


def test_conversational_prompts_get_conversational_completions(user_file, pool):
    rewards = build_reward_set([(f"{user_file}:chat_length", 1.0)], pool=pool)
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    try:
        totals, _ = rewards.compute(["a b c", "a"], [chat, chat], [{}, {}], ["", ""])
    finally:
        rewards.close()
    assert totals == [3.0, 1.0]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("boom", r"reward function boom \(.*my_rewards.py:boom\) raised ValueError: bad input"),
        ("short", "reward function short .*returned 1 values for 3 completions"),
        ("strings", r"returned str '1' at position 0; expected a float or None"),
        ("infinite", "returned inf at position 0; rewards must be finite"),
        ("die", r"the worker process died \(exit code 3\)"),
    ],
)
def test_a_failing_function_is_an_error_naming_it(name, message, user_file, pool):
    with pytest.raises(NgrpoError, match=message):
        _compute([(f"{user_file}:{name}", 1.0)], pool)


def test_a_hanging_function_is_killed_at_its_deadline(user_file, pool):
    rewards = build_reward_set([(f"{user_file}:hang", 1.0)], pool=pool, timeout_s=0.2)
    rewards.start()
    start = time.perf_counter()
    with pytest.raises(NgrpoError, match=r"reward function hang .*timed out after 0.6 s"):
        rewards.compute(COMPLETIONS, PROMPTS, COLUMNS, ANSWERS)
    assert time.perf_counter() - start < 30.0  # the 60 s sleep was cut short (0.6 s deadline)
    assert rewards.components[0].worker._process is None  # killed, restarted on the next call
    rewards.close()


def test_zero_policy_counts_failures_instead_of_stopping(user_file, pool):
    totals, metrics = _compute([(f"{user_file}:boom", 1.0), ("math", 1.0)], pool, on_error="zero")
    assert totals == [1.0, 0.0, 0.0]
    assert metrics["reward/boom"] == 0.0 and metrics["reward/boom/errors"] == 1.0


CAP = 300 * 10**6  # a worker with torch unimported holds ~0.1 GB of data


@pytest.mark.parametrize("policy", ["raise", "zero"])
def test_a_function_over_its_memory_cap_is_an_error_naming_it(policy, user_file, pool):
    """A function that allocates without bound hits its worker's cap (`train.reward_memory_gb`)
    and is reported by name; `raise` stops, `zero` counts the failure and goes on; the worker
    is usable again for the next call."""
    rewards = build_reward_set(
        [(f"{user_file}:hog", 1.0), ("math", 1.0)], pool=pool, memory_bytes=CAP, on_error=policy
    )
    message = (
        r"reward function hog \(.*my_rewards.py:hog\) ran out of memory \(MemoryError\); "
        r"its memory cap is 0.3 GB \(train.reward_memory_gb; null removes the cap\)"
    )
    try:
        for _ in range(2):  # the second call runs in the same worker, as far from the cap
            if policy == "raise":
                with pytest.raises(NgrpoError, match=message):
                    rewards.compute(COMPLETIONS, PROMPTS, COLUMNS, ANSWERS, IDS)
            else:
                totals, metrics = rewards.compute(COMPLETIONS, PROMPTS, COLUMNS, ANSWERS, IDS)
                assert totals == [1.0, 0.0, 0.0] and metrics["reward/hog/errors"] == 1.0
    finally:
        rewards.close()


def test_reward_workers_ignore_stop_signals(user_file, pool):
    """The trainer decides what happens on a stop request: a Ctrl-C reaches the whole process
    group, torchrun forwards signals to each worker's group, Slurm signals every process of a
    job step (SIGUSR1, whose default action is to exit, too)."""
    totals, _ = _compute([(f"{user_file}:signals_ignored", 1.0)], pool)
    assert totals == [1.0, 1.0, 1.0]


def test_bad_specs_fail_before_training(user_file, tmp_path):
    with pytest.raises(NgrpoError, match="does not exist"):
        build_reward_set([(str(tmp_path / "nope.py") + ":f", 1.0)])
    with pytest.raises(NgrpoError, match="has no attribute 'missing'"):
        build_reward_set([(f"{user_file}:missing", 1.0)])
    with pytest.raises(NgrpoError, match="cannot import module 'no_such_module_xyz'"):
        build_reward_set([("no_such_module_xyz:f", 1.0)])
    with pytest.raises(NgrpoError, match="lambda or a nested function"):
        build_reward_set([(lambda completions, **kw: [0.0] * len(completions), 1.0)])
    with pytest.raises(NgrpoError, match="not a reward"):
        check_spec("fuzzy")
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_module_xyz\n")
    with pytest.raises(NgrpoError, match="broken.py' failed to load: ModuleNotFoundError"):
        build_reward_set([(f"{broken}:f", 1.0)])


def test_config_keys_for_rewards(user_file):
    cfg = load_config("tiny_grpo", [f"train.rewards=[{{fn: math}}, {{fn: '{user_file}:format_ok', "
                                    "weight: 0.2}]", "train.reward_errors=zero"])  # fmt: skip
    assert cfg.train.reward_items() == [("math", 1.0), (f"{user_file}:format_ok", 0.2)]
    assert load_config("tiny_grpo", ["train.reward=pkg.mod:fn"]).train.reward_items() == [
        ("pkg.mod:fn", 1.0)
    ]
    assert load_config("tiny_grpo").train.reward_memory_gb == 8.0  # the default cap
    assert load_config("tiny_grpo", ["train.reward_memory_gb=null"]).train.reward_memory_gb is None
    assert load_config("tiny_grpo", ["train.reward_memory_gb=2"]).train.reward_memory_gb == 2.0
    from ngrpo.config import TrainConfig, validate_config

    cfg = TrainConfig()
    cfg.train.rewards = [{"fn": "math"}, {"fn": "m:f", "weight": 2}]  # set from Python
    assert validate_config(cfg).train.reward_items() == [("math", 1.0), ("m:f", 2.0)]
    cfg.train.rewards = ["math"]
    with pytest.raises(NgrpoError, match=r"train.rewards\[0\] must be a mapping"):
        validate_config(cfg)
    for override, message in [
        ("train.reward=fuzzy", "train.reward: 'fuzzy' is not a reward"),
        ("train.rewards=[{fn: math, wieght: 2}]", "unknown field 'wieght'"),
        ("train.rewards=[{weight: 2}]", r"train.rewards\[0\] needs fn"),
        ("train.rewards=[{fn: math, weight: x}]", r"train.rewards\[0\].weight must be a number"),
        ("train.reward_errors=ignore", "train.reward_errors: 'ignore' is not allowed"),
        ("train.reward_timeout_s=0", "train.reward_timeout_s must be > 0"),
        ("train.reward_memory_gb=0", r"train.reward_memory_gb must be > 0 \(GB\) or null"),
        ("train.reward_memory_gb=lots", "train.reward_memory_gb"),
    ]:
        with pytest.raises(NgrpoError, match=message):
            load_config("tiny_grpo", [override])


def length_reward(completions, **kwargs):
    """A top-level function: sent to the worker by reference."""
    return [float(len(c.split())) for c in completions]


def test_functions_passed_from_python_run_in_the_worker(pool):
    totals, metrics = _compute([(length_reward, 1.0)], pool)
    assert totals == [2.0, 2.0, 2.0] and math.isclose(metrics["reward/length_reward"], 2.0)
