"""Dataset loading: names and the bench-dir search order, task splits, JSONL / Parquet mapping."""

from __future__ import annotations

import json

import pytest

from ngrpo.data import (
    BENCH_DIR_ENV,
    PACKAGE_BENCH_DIR,
    Example,
    bench_dir_candidates,
    benchmark_names,
    load_benchmark,
)
from ngrpo.tasks import generate
from ngrpo.utils.errors import NgrpoError

SHIPPED = {
    "aime24": 30, "aime25": 30, "amc23": 40, "math500": 500, "minervamath": 272,
    "olympiadbench": 674, "gsm8k": 1319,
}  # fmt: skip


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(autouse=True)
def no_env_bench_dir(monkeypatch):
    monkeypatch.delenv(BENCH_DIR_ENV, raising=False)


def test_shipped_benchmarks_load_with_their_sizes():
    assert set(SHIPPED) <= set(benchmark_names())
    for name, size in SHIPPED.items():
        bench = load_benchmark(name)
        assert len(bench.examples) == size and bench.skipped == 0
        assert all(e.problem and e.answer for e in bench.examples)
        assert len({e.id for e in bench.examples}) == size


def test_gsm8k_gold_is_the_number_after_the_marker():
    first = load_benchmark("gsm8k", limit=1).examples[0]
    assert first.answer == "18"
    assert first.problem.startswith("Janet")


def test_task_splits_come_from_the_generator():
    bench = load_benchmark("arith-ood", limit=4)
    problems = generate("arith-ood", num=4)
    assert [e.problem for e in bench.examples] == [p.problem for p in problems]
    assert [e.answer for e in bench.examples] == [p.answer for p in problems]
    assert bench.examples[0] == Example("arith-ood/0", problems[0].problem, problems[0].answer)


def test_search_order(tmp_path, monkeypatch):
    option_dir, env_dir = tmp_path / "option", tmp_path / "env"
    option_dir.mkdir()
    env_dir.mkdir()
    write_jsonl(option_dir / "mine.jsonl", [{"problem": "p", "answer": "option"}])
    write_jsonl(env_dir / "mine.jsonl", [{"problem": "p", "answer": "env"}])
    write_jsonl(env_dir / "math500.jsonl", [{"problem": "p", "answer": "env copy"}])
    monkeypatch.setenv(BENCH_DIR_ENV, str(env_dir))
    assert bench_dir_candidates(option_dir)[:3] == [option_dir, env_dir, PACKAGE_BENCH_DIR]
    assert load_benchmark("mine", bench_dir=option_dir).examples[0].answer == "option"
    assert load_benchmark("mine").examples[0].answer == "env"
    assert load_benchmark("math500").examples[0].answer == "env copy"
    monkeypatch.delenv(BENCH_DIR_ENV)
    assert load_benchmark("math500", limit=1).examples[0].answer.startswith("\\left( 3")


def test_field_mapping_and_ids(tmp_path):
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"question": "q1", "answer": 7, "id": "a"},
            {"prompt": "q2", "answer": "work\n#### 1,000"},
            {"problem": "q3", "answer": ["1", "2"], "unique_id": "test/x.json"},
            "",
            {"problem": "q4", "answer": "x"},
        ],
    )
    examples = load_benchmark(path).examples
    assert examples == [
        Example("a", "q1", "7"),
        Example("mixed/2", "q2", "1,000"),
        Example("test/x.json", "q3", "1, 2"),
        Example("mixed/5", "q4", "x"),
    ]
    custom = write_jsonl(tmp_path / "custom.jsonl", [{"text": "q", "gold": "3", "answer": "9"}])
    example = load_benchmark(custom, problem_field="text", answer_field="gold").examples[0]
    assert (example.problem, example.answer) == ("q", "3")
    assert len(load_benchmark(path, limit=2).examples) == 2


def test_verl_parquet_layout(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {
            "data_source": "deepscaler",
            "prompt": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "1+1?"},
            ],
            "reward_model": {"style": "rule", "ground_truth": "2"},
            "extra_info": {"index": 17, "split": "train"},
        }
    ]
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert load_benchmark(path).examples == [Example("17", "1+1?", "2")]


def test_malformed_rows_raise_with_file_and_line_or_are_counted(tmp_path):
    path = write_jsonl(
        tmp_path / "bad.jsonl",
        [{"problem": "ok", "answer": "1"}, "{not json", {"problem": "no answer"}, "[1, 2]"],
    )
    with pytest.raises(NgrpoError, match=r"bad\.jsonl:2: invalid JSON"):
        load_benchmark(path)
    no_answer = write_jsonl(tmp_path / "noanswer.jsonl", [{"problem": "p"}])
    with pytest.raises(NgrpoError, match=r"noanswer\.jsonl:1: no answer"):
        load_benchmark(no_answer)
    bench = load_benchmark(path, skip_malformed=True)
    assert [e.problem for e in bench.examples] == ["ok"] and bench.skipped == 3


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(NgrpoError, match="unknown benchmark 'nope'.*known: arith-id"):
        load_benchmark("nope")
    (tmp_path / "data.tsv").write_text("problem\tanswer\n")
    with pytest.raises(NgrpoError, match="unsupported file type"):
        load_benchmark(tmp_path / "data.tsv")
    with pytest.raises(NgrpoError, match="limit"):
        load_benchmark("math500", limit=-1)


def test_extra_columns_reach_examples_from_jsonl_csv_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"question": "Make 10 from 3 7", "nums": "3 7", "target": "10"},
            {"question": "Make 4 from 2 2", "nums": "2 2", "target": "4"}]  # fmt: skip
    (tmp_path / "t.csv").write_text("question,nums,target\n" + "".join(
        f'"{r["question"]}",{r["nums"]},{r["target"]}\n' for r in rows))  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    write_jsonl(tmp_path / "t.jsonl", rows)
    for suffix in ("csv", "parquet", "jsonl"):
        bench = load_benchmark(tmp_path / f"t.{suffix}", require_answer=False)
        assert [e.problem for e in bench.examples] == [r["question"] for r in rows]
        assert [dict(e.columns) for e in bench.examples] == [
            {"nums": r["nums"], "target": r["target"]} for r in rows
        ]
        assert [e.answer for e in bench.examples] == ["", ""]
        assert bench.examples[0].prompt == rows[0]["question"]
    with pytest.raises(NgrpoError, match=r"t.csv:2: no answer"):  # line 1 is the header
        load_benchmark(tmp_path / "t.csv")
    bench = load_benchmark(tmp_path / "t.csv", answer_field="target")
    assert [e.answer for e in bench.examples] == ["10", "4"]


def test_chat_message_prompts_are_kept_whole(tmp_path):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"},
            {"role": "assistant", "content": "2"}, {"role": "user", "content": "2+2?"}]  # fmt: skip
    path = write_jsonl(tmp_path / "chat.jsonl", [
        {"prompt": chat, "answer": "4", "level": 1},
        {"prompt": [{"role": "robot", "content": "x"}], "answer": "1"},
        {"prompt": [{"role": "system", "content": "no user"}], "answer": "1"},
    ])  # fmt: skip
    with pytest.raises(NgrpoError, match=r"chat.jsonl:2: prompt\[0\] is not a chat message"):
        load_benchmark(path)
    bench = load_benchmark(path, skip_malformed=True)
    (example,) = bench.examples
    assert bench.skipped == 2
    assert example.problem == "2+2?" and example.prompt == chat
    assert dict(example.columns) == {"answer": "4", "level": 1}


def test_chat_prompts_go_through_the_chat_template_whole(embedded_tokenizer):
    from ngrpo.evaluation import build_prompts

    chat = [{"role": "system", "content": "Mia has 7 shells ."},
            {"role": "user", "content": "How many shells ?"}]  # fmt: skip
    (ids,) = build_prompts(embedded_tokenizer, [chat])
    text = embedded_tokenizer.decode(ids)
    assert text.index("Mia has 7 shells") < text.index("<|user|> How many shells ?")
    assert text.endswith("<|assistant|>")
