"""`ngrpo grade`: grade model responses against gold answers (generations from any engine).

ngrpo grade --answer 0.5 --response '<think> ... </think> \\boxed{\\frac12}' -v
ngrpo grade --file generations.jsonl --out graded.jsonl [--response-field response]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ngrpo.rewards import GRADERS, GradingPool, grade, grade_batch
from ngrpo.utils.errors import NgrpoError

CHUNK = 1024  # rows graded per pool call (progress granularity)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "grade",
        help="Grade model responses against gold answers",
        description="Grade one response (--answer/--response) or a JSONL file (--file/--out).",
    )
    parser.add_argument("--answer", help="gold answer (single mode)")
    parser.add_argument("--response", help="model response text (single mode)")
    parser.add_argument("--file", type=Path, help="JSONL file with one response per row")
    parser.add_argument("--out", type=Path, help="graded JSONL to write (file mode)")
    parser.add_argument("--response-field", default="response", help="field holding the response")
    parser.add_argument("--answer-field", default="answer", help="field holding the gold answer")
    parser.add_argument(
        "--grader", default="math", choices=list(GRADERS), help="how answers are compared"
    )
    parser.add_argument("--workers", type=int, default=None, help="grading processes")
    parser.add_argument("-v", "--verbose", action="store_true", help="also print the extraction")
    parser.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    single = args.answer is not None or args.response is not None
    if single == (args.file is not None):
        raise NgrpoError("use either --answer and --response, or --file and --out")
    if single:
        if args.answer is None or args.response is None:
            raise NgrpoError("single mode needs both --answer and --response")
        result = grade(args.response, args.answer, args.grader)
        print("correct" if result.correct else "incorrect")
        if args.verbose:
            print(f"extracted: {result.extracted}")
            print(f"reason: {result.reason}")
        return 0
    if args.out is None:
        raise NgrpoError("--file needs --out (where the graded rows go)")
    return _grade_file(args)


def _read_rows(path: Path, response_field: str, answer_field: str) -> list[dict]:
    if not path.is_file():
        raise NgrpoError(f"--file {str(path)!r} does not exist")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise NgrpoError(f"{path}:{line_number}: invalid JSON: {err.msg}") from err
            if not isinstance(row, dict):
                raise NgrpoError(f"{path}:{line_number}: expected a JSON object")
            for name in (response_field, answer_field):
                if not isinstance(row.get(name), (str, int, float)):
                    raise NgrpoError(
                        f"{path}:{line_number}: no field {name!r} "
                        "(set --response-field / --answer-field)"
                    )
            rows.append(row)
    return rows


def _grade_file(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress

    rows = _read_rows(args.file, args.response_field, args.answer_field)
    num_correct = 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with (
        GradingPool(args.workers) as pool,
        args.out.open("w", encoding="utf-8") as out,
        Progress(transient=True) as progress,
    ):
        task = progress.add_task("grading", total=len(rows))
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start : start + CHUNK]
            responses = [str(row[args.response_field]) for row in chunk]
            golds = [str(row[args.answer_field]) for row in chunk]
            for row, result in zip(
                chunk, grade_batch(responses, golds, args.grader, pool), strict=True
            ):
                num_correct += result.correct
                out.write(
                    json.dumps({**row, "extracted": result.extracted, "correct": result.correct})
                    + "\n"
                )
            progress.advance(task, len(chunk))
    accuracy = num_correct / len(rows) if rows else 0.0
    Console().print(f"accuracy: {accuracy:.4f} ({num_correct}/{len(rows)})  -> {args.out}")
    return 0
