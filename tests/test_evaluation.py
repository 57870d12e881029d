"""The evaluation API: a tiny random Qwen2 end to end, and scripted responses for exact metrics."""

from __future__ import annotations

import operator

import pytest
from factories import tiny_qwen2

import ngrpo.rollout
from ngrpo.data import Example, load_benchmark
from ngrpo.evaluation import (
    SampleResult,
    build_prompts,
    eval_metrics,
    evaluate,
    sample_examples,
    summarize,
)
from ngrpo.evaluation.metrics import pass_at_k
from ngrpo.models.tokenizer import build_tokenizer
from ngrpo.rewards import GradingPool
from ngrpo.utils.errors import NgrpoError


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    return tiny_qwen2(tokenizer)


@pytest.fixture(scope="module")
def pool():
    with GradingPool(num_workers=1) as grading_pool:
        yield grading_pool


def test_tiny_model_end_to_end(tiny_model, tokenizer, pool):
    examples = load_benchmark("arith-id", limit=3).examples
    kwargs = dict(n=3, max_new_tokens=6, batch_size=4, temperature=1.0, top_p=1.0, pool=pool)
    result = evaluate(tiny_model, tokenizer, examples, **kwargs)
    assert [(s.problem_id, s.sample) for s in result.samples] == [
        (e.id, j) for e in examples for j in range(3)
    ]
    assert all(isinstance(s.response, str) for s in result.samples)
    summary = result.summary
    assert (summary["num_problems"], summary["n"]) == (3, 3)
    assert set(summary["pass@k"]) == {"1", "2"}
    assert summary["pass@k"]["1"] == pytest.approx(summary["mean@n"])
    again = evaluate(tiny_model, tokenizer, examples, **kwargs)
    assert [s.response for s in again.samples] == [s.response for s in result.samples]


def test_the_shards_of_several_processes_are_one_processs_samples(tiny_model, tokenizer, pool):
    """batch_size 4 with n = 2: 2 problems per chunk, 5 problems in 3 chunks, seeded by their first
    problem's position; ranks 0 and 1 of 2 decode chunks {0, 2} and {1}, and together they are
    exactly one process's samples, in any order."""
    examples = load_benchmark("arith-id", limit=5).examples
    kwargs = dict(n=2, max_new_tokens=6, batch_size=4, temperature=1.0, top_p=1.0, pool=pool)
    whole = evaluate(tiny_model, tokenizer, examples, **kwargs)
    shards = [sample_examples(tiny_model, tokenizer, examples, **kwargs, shard=(rank, 2))
              for rank in (1, 0)]  # fmt: skip
    ids = [e.id for e in examples]
    assert {s.problem_id for s in shards[1]} == {*ids[:2], ids[4]}
    assert {s.problem_id for s in shards[0]} == set(ids[2:4])
    key = operator.attrgetter("problem_id", "sample")
    assert sorted(shards[0] + shards[1], key=key) == sorted(whole.samples, key=key)
    assert summarize(examples, shards[0] + shards[1], 2, pool=pool) == whole.summary
    with pytest.raises(ValueError, match="shard"):
        sample_examples(tiny_model, tokenizer, examples, **kwargs, shard=(2, 2))


class ScriptedRollouts:
    """Stands in for `ngrpo.rollout.generate`: sample j of problem i is correct when j < c_i."""

    def __init__(self, tokenizer, examples, correct_counts):
        self.tokenizer = tokenizer
        self.by_prompt = {
            tuple(ids): (example, c)
            for ids, example, c in zip(
                build_prompts(tokenizer, [e.problem for e in examples]), examples, correct_counts,
                strict=True,
            )
        }  # fmt: skip
        self.prompts_seen: list[str] = []
        self.calls: list[dict] = []

    def __call__(self, model, prompts, sampling, **kwargs):
        self.calls.append(kwargs)
        rows = []
        for ids in prompts:
            example, c = self.by_prompt[tuple(ids)]
            self.prompts_seen.append(example.id)
            for j in range(sampling.n):
                answer = int(example.answer) + (0 if j < c else 1)
                text = f"<think> 1 + 1 = 2 . </think> The answer is \\boxed{{ {answer} }} ."
                rows.append(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return type("Batch", (), {"responses": lambda self: rows})()


def test_metrics_from_scripted_responses(monkeypatch, tokenizer, pool):
    examples = load_benchmark("arith-id", limit=5).examples
    counts = [0, 1, 2, 4, 4]
    script = ScriptedRollouts(tokenizer, examples, counts)
    monkeypatch.setattr(ngrpo.rollout, "generate", script)
    result = evaluate(None, tokenizer, examples, n=4, batch_size=8, pool=pool)
    assert [s.correct for s in result.samples] == [j < c for c in counts for j in range(4)]
    assert all(s.extracted is not None for s in result.samples)
    summary = result.summary
    for k in ("1", "2", "4"):
        expected = sum(pass_at_k(4, c, int(k)) for c in counts) / 5
        assert summary["pass@k"][k] == pytest.approx(expected)
    assert summary["mean@n"] == pytest.approx(11 / 20)
    # majority: c=2 ties 2-2 and the first-seen (correct) answer wins
    assert summary["maj@n"] == pytest.approx(3 / 5)
    assert summary["unparsed"] == 0.0
    # chunks of batch_size // n = 2 prompts, each with its own seed; evaluation never mixes
    assert [call["seed"] for call in script.calls] == [0, 2, 4]
    assert all(call["exploration"] is None and call["training"] is False for call in script.calls)


def test_completed_problems_are_not_generated_again(monkeypatch, tokenizer, pool):
    examples = load_benchmark("arith-id", limit=3).examples
    script = ScriptedRollouts(tokenizer, examples, [2, 2, 2])
    monkeypatch.setattr(ngrpo.rollout, "generate", script)
    done = [SampleResult(examples[1].id, j, "old", "7", True) for j in range(2)]
    chunks: list[list[SampleResult]] = []
    result = evaluate(
        None, tokenizer, examples, n=2, batch_size=2, pool=pool,
        completed={examples[1].id: done}, on_chunk=chunks.append,
    )  # fmt: skip
    assert script.prompts_seen == [examples[0].id, examples[2].id]
    assert result.samples[2:4] == done
    assert [s.problem_id for chunk in chunks for s in chunk] == [examples[0].id] * 2 + [
        examples[2].id
    ] * 2


def test_errors_and_metric_names(tokenizer):
    with pytest.raises(NgrpoError, match="empty"):
        evaluate(None, tokenizer, [], n=1)
    twice = [Example("a", "p", "1"), Example("a", "q", "2")]
    with pytest.raises(NgrpoError, match="unique"):
        evaluate(None, tokenizer, twice, n=1)
    with pytest.raises(NgrpoError, match="top_p"):
        evaluate(None, tokenizer, [Example("a", "p", "1")], n=1, top_p=0.0)
    summary = {"mean@n": 0.5, "maj@n": 1.0, "unparsed": 0.0, "pass@k": {"1": 0.5, "2": 0.75}}
    assert eval_metrics("arith-id", summary) == {
        "eval/arith-id/mean@n": 0.5,
        "eval/arith-id/maj@n": 1.0,
        "eval/arith-id/unparsed": 0.0,
        "eval/arith-id/pass@1": 0.5,
        "eval/arith-id/pass@2": 0.75,
    }


def test_a_training_runs_evaluation_decodes_on_its_kept_decoder(
    monkeypatch, tiny_model, tokenizer, pool
):
    # the trainer's evaluation (`ngrpo.trainer.loop._evaluate`) must not build a second static
    # decoder (weight copies, KV cache, graph pool) beside the one kept between steps
    from contextlib import nullcontext
    from types import SimpleNamespace

    import ngrpo.rollout.decoders
    from ngrpo.config import load_config
    from ngrpo.rollout import DecoderPool
    from ngrpo.trainer.loop import _evaluate

    built = []

    class CountedDecoder(ngrpo.rollout.decoders.StaticDecoder):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(ngrpo.rollout.decoders, "StaticDecoder", CountedDecoder)
    cfg = load_config("tiny_ngrpo", ["eval.n=2", "eval.max_new_tokens=6"])
    run = SimpleNamespace(
        cfg=cfg, accelerator=SimpleNamespace(autocast=nullcontext, process_index=0,
                                             num_processes=1), policy=tiny_model,
        tokenizer=tokenizer, pool=pool, decoders=DecoderPool(), step=0,
        eval_sets={"arith-id": load_benchmark("arith-id", limit=2).examples},
    )  # fmt: skip
    first = _evaluate(run)
    assert len(built) == 1 and run.decoders.decoder is built[0]  # the evaluation's, kept
    assert _evaluate(run) == first  # same seeds, same decoder: the same samples
    assert len(built) == 1 and run.decoders.reused == 1  # re-used, not rebuilt
