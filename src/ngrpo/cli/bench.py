"""`ngrpo bench`: benchmarks written as JSON, one sub-command per benchmark.

Adding a benchmark is one `register_<name>(subparsers)` function listed in `BENCHMARKS`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ngrpo.cli._common import (
    _check_preset,
    _dtype_name,
    _prompts,
    _require_positive,
    _set_threads,
    _strategy_list,
    _write_json,
)

DEFAULT_MODEL = "base"  # the embedded base model shipped with ngrpo


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="Benchmarks (rollout, learner, train, mismatch) written as JSON",
        description="Benchmarks (rollout, learner, train, mismatch) written as JSON.",
    )
    benches = parser.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    for register_bench in BENCHMARKS.values():
        register_bench(benches)


def register_rollout(benches) -> None:
    parser = benches.add_parser(
        "rollout",
        help="Rollout tokens/s per strategy vs model.generate, and neighbour lookup cost",
        description=(
            "Tokens/s of the rollout engine (strategies none, neighbor, gaussian; mixing forced at "
            "--mix-rate; fixed length) and of model.generate(do_sample=True) on the same batch, "
            "plus the cached vs brute-force neighbour lookup on a random "
            "--lookup-vocab x --lookup-dim table."
        ),
    )
    _common_options(parser)
    parser.add_argument("--batch", type=int, default=64, help="sequences per rollout")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per sequence")
    parser.add_argument("--mix-rate", type=float, default=0.1, help="forced mixing rate")
    parser.add_argument("--lookup-vocab", type=int, default=151_936, help="lookup table rows")
    parser.add_argument("--lookup-dim", type=int, default=1_536, help="lookup table columns")
    scale = parser.add_argument_group(
        "at a model's shape (--preset: random weights, no hub; --model, --batch, --new-tokens and "
        "the lookup options are then unused)"
    )
    scale.add_argument("--preset", help="r1-distill-1.5b or tiny (CPU-sized, seconds)")
    scale.add_argument("--rows", type=int, default=256, help="sequences decoded together")
    scale.add_argument("--prompt-tokens", type=int, default=256, help="tokens per prompt")
    scale.add_argument(
        "--lengths", default="1024,2048,4096", help="response lengths, comma-separated"
    )
    scale.add_argument("--strategies", default="none,neighbor", help="comma-separated")
    scale.add_argument(
        "--eos-rate", type=float, default=0.0,
        help="also time a batch of very different lengths (EOS hazard per step), compaction on "
        "vs off",
    )  # fmt: skip
    scale.add_argument("--dtype", help="bfloat16 | float32 (default: bfloat16 on cuda, else fp32)")
    parser.set_defaults(func=run_rollout)


def register_learner(benches) -> None:
    parser = benches.add_parser(
        "learner",
        help="Learner forward + backward tokens/s: soft inputs vs token ids",
        description=(
            "Forward + backward tokens/s of the policy on --batch x --length tokens fed as token "
            "ids and as soft-input records with --k candidates per position (a --mix-rate "
            "fraction mixed with nearest neighbours, as N-GRPO records them)."
        ),
    )
    _common_options(parser)
    parser.add_argument("--batch", type=int, default=32, help="sequences per forward")
    parser.add_argument("--length", type=int, default=64, help="tokens per sequence")
    parser.add_argument("--k", type=int, default=3, help="candidates per soft input (2-3)")
    parser.add_argument("--mix-rate", type=float, default=0.1, help="fraction of mixed positions")
    scale = parser.add_argument_group(
        "one learner update at a model's shape, random weights, no hub (--preset or --vocab; "
        "--length is then the response length, --batch and --model are unused; plain-text output)"
    )
    shape = scale.add_mutually_exclusive_group()
    shape.add_argument("--preset", help="r1-distill-1.5b or tiny")
    shape.add_argument("--vocab", type=int, help="a d-512, 2-layer Qwen2 with this vocabulary")
    scale.add_argument("--rows", type=int, default=4, help="rows per update (one mini-batch)")
    scale.add_argument("--prompt-tokens", type=int, default=256, help="prompt tokens per row")
    scale.add_argument(
        "--variants", default="chunked+mb1",
        help="comma-separated: full|chunked, then +mb<N> (rows per micro-batch) or +tok<N> "
        "(token budget), optionally +ckpt (gradient checkpointing); e.g. full+mb1,chunked+mb1",
    )  # fmt: skip
    scale.add_argument(
        "--chunk-elements",
        type=int,
        default=None,
        help="logits elements per head chunk (default: 2^26 on cuda, 2^24 on cpu)",
    )
    scale.add_argument("--dtype", help="bfloat16 | float32 (default: bfloat16 on cuda, else fp32)")
    parser.set_defaults(func=run_learner_entry)


def register_train(benches) -> None:
    from ngrpo.cli.bench_step import register_train as register

    register(benches)


def register_mismatch(benches) -> None:
    from ngrpo.cli.bench_step import register_mismatch as register

    register(benches)


BENCHMARKS = {
    "rollout": register_rollout,
    "learner": register_learner,
    "train": register_train,
    "mismatch": register_mismatch,
}


def _common_options(parser) -> None:
    """Options every benchmark takes."""
    parser.add_argument("--json", type=Path, help="write the result to this file")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model directory (default: base)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions (median)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )


def run_rollout(args: argparse.Namespace) -> int:
    if args.preset is not None:
        return run_rollout_preset(args)
    from rich.console import Console
    from rich.table import Table

    from ngrpo.bench.rollout import rollout_report
    from ngrpo.method.exploration import answer_start_ids
    from ngrpo.models.load import load_model_and_tokenizer

    _require_positive(args, "batch", "new_tokens", "repeats", "lookup_vocab", "lookup_dim")
    _set_threads(args.threads)
    console = Console(stderr=True)
    with console.status("loading model") as status:
        model, tokenizer = load_model_and_tokenizer(args.model, device=args.device)
        report = rollout_report(
            model,
            _prompts(tokenizer, args.batch),
            pad_token_id=tokenizer.pad_token_id,
            answer_start_ids=answer_start_ids(tokenizer, "</think>"),
            new_tokens=args.new_tokens,
            repeats=args.repeats,
            mix_rate=args.mix_rate,
            lookup_shape=(args.lookup_vocab, args.lookup_dim),
            progress=lambda stage: status.update(f"timing {stage}"),
        )
    report["model"] = str(args.model)

    table = Table(
        title=f"rollout, {report['batch']} x {report['new_tokens']} tokens, {report['device']}"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in report["tokens_per_s"].items():
        table.add_row(f"tokens/s {name}", f"{value:,.0f}")
    for name, value in report["ratios"].items():
        table.add_row(name, f"{value:,.2f}")
    lookup = report["neighbor_lookup"]
    table.add_row("lookup cached µs/token", f"{lookup['cached_us_per_token']:.2f}")
    table.add_row("lookup brute force µs/token", f"{lookup['bruteforce_us_per_token']:,.1f}")
    Console().print(table)
    _write_json(args.json, report)
    return 0


def _int_list(option: str, text: str) -> list[int]:
    from ngrpo.utils.errors import NgrpoError

    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise NgrpoError(f"{option} must be positive integers separated by commas, got {text!r}")
    return values


def run_rollout_preset(args: argparse.Namespace) -> int:
    """`--preset`: plain-text output (no rich), so it runs where only torch + transformers are."""
    import sys

    import torch

    from ngrpo.bench.rollout_scale import scale_report
    from ngrpo.models.presets import preset_model
    from ngrpo.utils.errors import NgrpoError

    _check_preset(args.preset)
    lengths = _int_list("--lengths", args.lengths)
    strategies = _strategy_list(args.strategies)
    _require_positive(args, "rows", "prompt_tokens", "repeats")
    if not 0.0 <= args.eos_rate < 1.0:
        raise NgrpoError(f"--eos-rate must be in [0, 1), got {args.eos_rate}")
    dtype_name = _dtype_name(args)
    _set_threads(args.threads)

    def say(stage: str) -> None:
        print(f"bench rollout: {stage}", file=sys.stderr, flush=True)

    say(f"building {args.preset} ({dtype_name}) on {args.device}")
    model = preset_model(args.preset, args.device, getattr(torch, dtype_name))
    report = scale_report(
        model, rows=args.rows, prompt_tokens=args.prompt_tokens, lengths=lengths,
        strategies=strategies, repeats=args.repeats, mix_rate=args.mix_rate,
        eos_rate=args.eos_rate, progress=say,
        checkpoint=lambda partial: _write_json(args.json, {**partial, "preset": args.preset}),
    )  # fmt: skip
    report["preset"] = args.preset
    _write_json(args.json, report)
    print(f"rollout, {args.preset}, {report['rows']} rows x {report['prompt_tokens']} prompt "
          f"tokens, {report['device']} ({report['dtype']}), copy bandwidth "
          f"{report['copy_bandwidth_gb_s']:.0f} GB/s")  # fmt: skip
    for length, entry in report["lengths"].items():
        for name, row in entry.items():
            if isinstance(row, dict):
                extra = (
                    f", roofline {row['roofline_fraction']:.0%}, graph capture "
                    f"{row['graph_capture_s']:.2f} s"
                    if "roofline_fraction" in row
                    else ""
                )
                print(f"  {length:>6} tokens  {name:<20} {row['ms_per_step']:8.2f} ms/step "
                      f"{row['tokens_per_s']:12,.0f} tokens/s{extra}")  # fmt: skip
    varied = report.get("varied_lengths")
    if varied:
        print(f"  varied lengths {varied['response_length']}: compaction "
              f"{varied['compact']['seconds']:.2f} s vs {varied['no_compact']['seconds']:.2f} s "
              f"without ({varied['speedup']:.2f}x)")  # fmt: skip
    return 0


def run_learner(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ngrpo.bench.learner import learner_report
    from ngrpo.models.load import load_model
    from ngrpo.utils.errors import NgrpoError

    _require_positive(args, "batch", "repeats", "k")
    if args.length < 2:
        raise NgrpoError(f"--length must be >= 2, got {args.length}")
    if not 0.0 <= args.mix_rate <= 1.0:
        raise NgrpoError(f"--mix-rate must be in [0, 1], got {args.mix_rate}")
    _set_threads(args.threads)
    console = Console(stderr=True)
    with console.status("loading model") as status:
        model = load_model(args.model, device=args.device)
        vocab = model.get_input_embeddings().weight.shape[0]
        if args.k >= vocab:
            raise NgrpoError(f"--k ({args.k}) must be below the vocabulary size ({vocab})")
        report = learner_report(
            model, batch=args.batch, length=args.length, repeats=args.repeats, k=args.k,
            mix_rate=args.mix_rate, progress=lambda stage: status.update(f"timing {stage}"),
        )  # fmt: skip
    report["model"] = str(args.model)

    table = Table(
        title=f"learner forward + backward, {report['batch']} x {report['length']} tokens, "
        f"{report['device']}"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in report["tokens_per_s"].items():
        table.add_row(f"tokens/s {name}", f"{value:,.0f}")
    table.add_row("soft / token ids", f"{report['soft_over_token_ids']:.2f}")
    Console().print(table)
    _write_json(args.json, report)
    return 0


def run_learner_entry(args: argparse.Namespace) -> int:
    """`--preset` / `--vocab`: the update at scale; otherwise soft inputs vs token ids."""
    if args.preset is not None or args.vocab is not None:
        return run_learner_scale(args)
    return run_learner(args)


def run_learner_scale(args: argparse.Namespace) -> int:
    """Plain-text output (no rich), so it runs where only torch + transformers are installed."""
    import sys

    import torch

    from ngrpo.bench.learner import learner_scale_report, parse_variant, vocab_model
    from ngrpo.models.presets import preset_model
    from ngrpo.utils.errors import NgrpoError

    _check_preset(args.preset)
    _require_positive(args, "rows", "prompt_tokens", "repeats", "length", "k")
    if args.vocab is not None and args.vocab <= args.k:
        raise NgrpoError(f"--vocab must be above --k ({args.k}), got {args.vocab}")
    if args.chunk_elements is not None and args.chunk_elements < 1:
        raise NgrpoError(f"--chunk-elements must be >= 1, got {args.chunk_elements}")
    if not 0.0 <= args.mix_rate <= 1.0:
        raise NgrpoError(f"--mix-rate must be in [0, 1], got {args.mix_rate}")
    variants = [parse_variant(v) for v in args.variants.split(",") if v.strip()]
    if not variants:
        raise NgrpoError("--variants: give at least one, e.g. chunked+mb1")
    dtype_name = _dtype_name(args)
    _set_threads(args.threads)

    def say(stage: str) -> None:
        print(f"bench learner: {stage}", file=sys.stderr, flush=True)

    shape = args.preset or f"vocab {args.vocab}"
    say(f"building {shape} ({dtype_name}) on {args.device}")
    if args.preset is not None:
        model = preset_model(args.preset, args.device, getattr(torch, dtype_name))
    else:
        model = vocab_model(args.vocab, args.device, getattr(torch, dtype_name))
    label = {"preset": args.preset} if args.preset is not None else {"vocab_model": args.vocab}
    report = learner_scale_report(
        model, rows=args.rows, prompt_tokens=args.prompt_tokens, length=args.length,
        variants=variants, repeats=args.repeats, k=args.k, mix_rate=args.mix_rate,
        chunk_elements=args.chunk_elements, progress=say,
        checkpoint=lambda partial: _write_json(args.json, {**partial, **label}),
    )  # fmt: skip
    report.update(label)
    _write_json(args.json, report)
    memory = report["memory"]
    print(f"learner update, {shape}, {report['rows']} rows x ({report['prompt_tokens']} + "
          f"{report['length']}) tokens, {report['device']} ({report['dtype']}); one fp32 (T, V) "
          f"logits tensor = {memory['logits_fp32_bytes'] / 2**30:.2f} GiB")  # fmt: skip
    for name, row in report["variants"].items():
        if "error" in row:
            print(f"  {name:<24} {row['error']}")
            continue
        flops = (f", {row['bf16_peak_fraction']:.0%} of bf16 peak"
                 if "bf16_peak_fraction" in row else "")  # fmt: skip
        print(f"  {name:<24} {row['seconds_per_update']:8.3f} s/update "
              f"{row['tokens_per_s']:10,.0f} tokens/s{flops}; peak {row['peak_bytes'] / 2**30:.2f} "
              f"GiB, extra {row['peak_extra_bytes'] / 2**30:.2f} GiB "
              f"({row['peak_extra_over_logits']:.2f} x logits)")  # fmt: skip
    return 0
