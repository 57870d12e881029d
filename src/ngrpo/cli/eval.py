"""`ngrpo eval`: evaluate a model on benchmarks with pass@k (mixing always off).

    ngrpo eval --model DIR --bench math500 aime24 --n 32 --temperature 0.6 --top-p 0.95 \\
        --max-new-tokens 8192 --batch-size 256 --out results.json

Prints a table of the results. With `--out FILE` also writes FILE (summary: per benchmark
num_problems, n, mean@n, pass@k for k = 1, 2, 4, ... <= n, maj@n, unparsed; plus the config) and
`FILE.samples.jsonl` next to it (one row per sample: benchmark, problem id, response, extracted
answer, correct); re-running with the same `--out` and the same settings skips the problems whose n
samples are already in the JSONL. Without `--out` nothing is written (no shared default file that
a later evaluation of another model would collide with).

`--max-new-tokens` defaults to 1024, lowered (with a note) to what the model's positions leave
after the longest prompt; a value given that does not fit is an error naming both numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ngrpo.rewards import GRADERS
from ngrpo.utils.errors import NgrpoError

# Settings that change the samples: a resumed run must use the same values.
GENERATION_KEYS = (
    "model", "n", "temperature", "top_p", "top_k", "max_new_tokens", "seed", "grader",
)  # fmt: skip
DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_MAX_NEW_TOKENS = 1024


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="Evaluate a model on benchmarks with pass@k (mixing off)",
        description="Evaluate a model on benchmarks with pass@k (mixing always off).",
    )
    parser.add_argument("--model", required=True, help="local HF model directory, or `base`")
    parser.add_argument(
        "--bench", nargs="+", required=True, help="benchmark names, task splits or JSONL/Parquet"
    )
    parser.add_argument("--n", type=int, default=32, help="samples per problem")
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument(
        "--max-new-tokens", type=int, default=None,
        help=f"default {DEFAULT_MAX_NEW_TOKENS}, or what the model's positions leave after the "
        "longest prompt",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=64, help="sequences decoded together")
    parser.add_argument("--limit", type=int, default=None, help="first K problems per benchmark")
    parser.add_argument("--bench-dir", default=None, help="directory of <name>.jsonl benchmarks")
    parser.add_argument("--problem-field", default=None, help="problem field of data files")
    parser.add_argument("--answer-field", default=None, help="answer field of data files")
    parser.add_argument("--grader", default="math", choices=list(GRADERS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument(
        "--out", type=Path, default=None,
        help="summary JSON (and FILE.samples.jsonl; resumable); default: print only",
    )  # fmt: skip
    parser.set_defaults(func=handler)


def samples_path(out: Path) -> Path:
    return out.with_name(out.stem + ".samples.jsonl")


def _load_completed(path: Path) -> dict[str, dict[str, list]]:
    """benchmark -> problem id -> list of SampleResult already in the per-sample JSONL."""
    from ngrpo.evaluation import SampleResult

    completed: dict[str, dict[str, dict]] = {}
    if not path.is_file():
        return completed
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            try:
                row = json.loads(line)
                sample = SampleResult(
                    row["problem_id"], row["sample"], row["response"], row["extracted"],
                    row["correct"],
                )  # fmt: skip
            except (json.JSONDecodeError, KeyError, TypeError):
                if line.endswith("\n"):
                    raise NgrpoError(
                        f"{path}:{line_number}: not a sample row; delete the file to start over"
                    ) from None
                continue  # a last line cut off by an interruption: redone
            # keyed by sample index: a problem redone after an interruption keeps its last rows
            by_problem = completed.setdefault(row["benchmark"], {})
            by_problem.setdefault(sample.problem_id, {})[sample.sample] = sample
    return {
        bench: {pid: [rows[j] for j in sorted(rows)] for pid, rows in problems.items()}
        for bench, problems in completed.items()
    }


def _check_resumable(out: Path, config: dict) -> dict:
    """Previous summaries in `out` when its generation settings match `config`, else an error."""
    if not out.is_file():
        return {}
    try:
        previous = json.loads(out.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise NgrpoError(f"{out} is not JSON; delete it or choose another --out") from err
    old = previous.get("config", {})
    changed = [k for k in GENERATION_KEYS if old.get(k) != config[k]]
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)!r} -> {config[k]!r}" for k in changed)
        raise NgrpoError(
            f"{out} was written with other settings ({diffs}); "
            "use another --out or delete it to start over"
        )
    return previous.get("benchmarks", {})


def _write_summary(out: Path, summaries: dict, config: dict) -> None:
    out.write_text(json.dumps({"benchmarks": summaries, "config": config}, indent=2) + "\n")


def _table(summaries: dict, n: int):
    from rich.table import Table

    from ngrpo.evaluation.metrics import powers_of_two_up_to

    ks = powers_of_two_up_to(n)
    table = Table(title=f"evaluation (n = {n})")
    for column in ["benchmark", "problems", "mean@n", "maj@n"] + [f"pass@{k}" for k in ks]:
        table.add_column(column, justify="left" if column == "benchmark" else "right")
    table.add_column("unparsed", justify="right")
    for name, s in summaries.items():
        passes = [f"{100 * s['pass@k'][str(k)]:.1f}" for k in ks]
        table.add_row(
            name, str(s["num_problems"]), f"{100 * s['mean@n']:.1f}", f"{100 * s['maj@n']:.1f}",
            *passes, f"{100 * s['unparsed']:.1f}",
        )  # fmt: skip
    return table


def _max_new_tokens(requested: int | None, model, tokenizer, benchmarks, console) -> int:
    """`--max-new-tokens`, or its default lowered to what the model's positions leave after the
    longest prompt (said on the console); a requested value that does not fit is left to
    `evaluate`, which refuses it naming both numbers."""
    from ngrpo.evaluation import build_prompts
    from ngrpo.models.limits import position_limit

    if requested is not None:
        return requested
    limit = position_limit(getattr(model, "config", {}))
    if limit is None:
        return DEFAULT_MAX_NEW_TOKENS
    problems = [e.problem for bench in benchmarks for e in bench.examples]
    longest = max(map(len, build_prompts(tokenizer, problems)))
    room = limit - longest
    if room >= DEFAULT_MAX_NEW_TOKENS or room < 1:
        return DEFAULT_MAX_NEW_TOKENS  # no room at all: `evaluate` says why
    console.print(
        f"note: --max-new-tokens {room} (the model's {limit} positions minus the longest prompt, "
        f"{longest} tokens; the default {DEFAULT_MAX_NEW_TOKENS} does not fit)", style="yellow",
    )  # fmt: skip
    return room


def handler(args: argparse.Namespace) -> int:
    import contextlib

    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from ngrpo.data import load_benchmark
    from ngrpo.evaluation import evaluate
    from ngrpo.models.load import load_model_and_tokenizer
    from ngrpo.rewards import GradingPool

    if args.n < 1 or args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        raise NgrpoError("--n, --batch-size and --limit must be >= 1")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise NgrpoError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    benchmarks = [
        load_benchmark(
            source,
            bench_dir=args.bench_dir,
            limit=args.limit,
            problem_field=args.problem_field,
            answer_field=args.answer_field,
        )  # fmt: skip
        for source in args.bench
    ]
    model, tokenizer = load_model_and_tokenizer(args.model, device, getattr(torch, args.dtype))
    console = Console()
    max_new_tokens = _max_new_tokens(args.max_new_tokens, model, tokenizer, benchmarks, console)
    config = {
        "model": str(args.model), "benchmarks": list(args.bench), "n": args.n,
        "temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k,
        "max_new_tokens": max_new_tokens, "batch_size": args.batch_size,
        "limit": args.limit, "seed": args.seed, "grader": args.grader, "mixing": "off",
        "device": device, "dtype": args.dtype,
    }  # fmt: skip
    summaries, completed = {}, {}
    if args.out is not None:
        summaries = _check_resumable(args.out, config)
        completed = _load_completed(samples_path(args.out))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        _write_summary(args.out, summaries, config)

    with (
        GradingPool() as pool,
        samples_path(args.out).open("a", encoding="utf-8") if args.out is not None
        else contextlib.nullcontext() as sample_file,
        Progress(
            "{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console,
        ) as progress,
    ):  # fmt: skip
        for bench in benchmarks:
            done = completed.get(bench.name, {})
            task = progress.add_task(bench.name, total=len(bench.examples))
            finished = sum(len(done.get(e.id, ())) == args.n for e in bench.examples)
            progress.advance(task, finished)

            def on_chunk(new, name=bench.name, task=task):
                if sample_file is not None:
                    for sample in new:
                        row = {"benchmark": name, **sample.to_json()}
                        sample_file.write(json.dumps(row) + "\n")
                    sample_file.flush()
                progress.advance(task, len(new) // args.n)

            result = evaluate(
                model, tokenizer, bench.examples, n=args.n, temperature=args.temperature,
                top_p=args.top_p, top_k=args.top_k, max_new_tokens=max_new_tokens,
                batch_size=args.batch_size, seed=args.seed, grader=args.grader, pool=pool,
                completed=done, on_chunk=on_chunk,
            )  # fmt: skip
            summaries[bench.name] = result.summary
            if args.out is not None:
                _write_summary(args.out, summaries, config)
    console.print(_table({b.name: summaries[b.name] for b in benchmarks}, args.n))
    if args.out is not None:
        console.print(f"summary -> {args.out}; samples -> {samples_path(args.out)}")
    else:
        console.print("nothing written (--out FILE writes the summary and the samples)",
                      style="dim")  # fmt: skip
    return 0
