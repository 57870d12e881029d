"""`ngrpo bench train` and `ngrpo bench mismatch`: a whole training step, and the bf16
rollout–learner gap (see `ngrpo.bench.train` and `ngrpo.bench.mismatch`)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def register_train(benches) -> None:
    parser = benches.add_parser(
        "train",
        help="Whole training steps at a model's shape (random weights), every phase timed",
        description=(
            "Runs `ngrpo train`'s own steps on a random-weight model of --preset's shape with the "
            "embedded tokenizer, at --prompts x --group responses of --new-tokens tokens (lengths "
            "forced: random weights almost never draw EOS), and reports each phase (rollout, "
            "rewards, reference, pi_old recompute, forward/backward, optimizer, rollout copy), "
            "throughputs, the learner's fraction of bf16 peak, peak memory next to `ngrpo plan`; "
            "--profile adds the top ops of one profiled step."
        ),
    )
    parser.add_argument("--preset", default="tiny", help="r1-distill-1.5b or tiny (default)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--dtype", help="bfloat16 | float32 (default: bfloat16 on cuda, else fp32)")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--group", type=int, default=4, help="responses per prompt")
    parser.add_argument("--prompt-tokens", type=int, default=32, help="words per prompt")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens per response")
    parser.add_argument("--micro-batch", type=int, default=8, help="rows per micro-batch")
    parser.add_argument(
        "--mini-batch", type=int, default=None, help="prompts per optimizer step (default: all)"
    )
    parser.add_argument("--strategy", default="neighbor", help="neighbor (N-GRPO) or none (GRPO)")
    parser.add_argument("--steps", type=int, default=3, help="steps run, the first untimed")
    parser.add_argument("--profile", action="store_true", help="profile one more step")
    parser.add_argument("--workdir", type=Path, help="where the model and run go (default: tmp)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="write the result to this file")
    parser.add_argument(
        "overrides", nargs="*", metavar="key.sub=value", help="more config overrides"
    )
    parser.set_defaults(func=run_train)


def register_mismatch(benches) -> None:
    parser = benches.add_parser(
        "mismatch",
        help="The bf16 rollout-learner gap: per precision and strategy, layer by layer",
        description=(
            "Rollouts under autocast in --dtype, then the learner's log-probs of the same "
            "records: the gap (mismatch/*), where the residual streams part layer by layer, the "
            "cost of recomputing pi_old, and with --time-decode each decoder precision's step."
        ),
    )
    parser.add_argument("--model", default="base", help="model directory (default: base)")
    parser.add_argument("--preset", help="random weights of this shape instead of --model")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--dtype", default="bfloat16", help="bfloat16 (default) | float16")
    parser.add_argument("--prompts", type=int, default=16, help="prompts")
    parser.add_argument("--n", type=int, default=8, help="responses per prompt")
    parser.add_argument("--prompt-tokens", type=int, default=64, help="prompt tokens (--preset)")
    parser.add_argument("--new-tokens", type=int, default=48, help="tokens per response")
    parser.add_argument("--strategies", default="none,neighbor", help="comma-separated")
    parser.add_argument("--mix-rate", type=float, default=0.2, help="mixing rate (not none)")
    parser.add_argument("--micro-batch", type=int, default=8, help="rows per micro-batch")
    parser.add_argument("--time-decode", action="store_true", help="time each precision's step")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="write the result to this file")
    parser.set_defaults(func=run_mismatch)


def run_train(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ngrpo.bench.train import bench_config, make_run_dir, train_report
    from ngrpo.cli._common import (
        _check_preset,
        _dtype_name,
        _require_positive,
        _set_threads,
        _write_json,
    )
    from ngrpo.method.exploration import STRATEGIES
    from ngrpo.utils.errors import NgrpoError

    _check_preset(args.preset)
    if args.strategy not in STRATEGIES:
        raise NgrpoError(f"--strategy must be one of {', '.join(STRATEGIES)}")
    _require_positive(
        args, "prompts", "group", "prompt_tokens", "new_tokens", "micro_batch", "steps"
    )
    dtype = _dtype_name(args)
    _set_threads(args.threads)
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory() as tmp, console.status("bench train") as status:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        status.update("writing the random-weight model")
        model_dir = make_run_dir(args.preset, workdir, args.prompts, args.prompt_tokens)
        cfg = bench_config(
            model_dir, workdir, device=args.device, dtype=dtype, prompts=args.prompts,
            group=args.group, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
            micro_batch=args.micro_batch, mini_batch=args.mini_batch, strategy=args.strategy,
            steps=args.steps, extra=args.overrides,
        )  # fmt: skip
        report = train_report(
            cfg, warmup=1 if args.steps > 1 else 0, profile=args.profile, progress=status.update,
            checkpoint=lambda partial: _write_json(args.json, {**partial, "preset": args.preset}),
        )  # fmt: skip
    report["preset"] = args.preset
    table = Table(title=f"bench train, {args.preset}, {report['device_name']}, {dtype}")
    table.add_column("median")
    table.add_column("value", justify="right")
    for key, value in report["median"].items():
        table.add_row(key, f"{value:,.3f}" if key.endswith("_s") else f"{value:,.0f}")
    peak = report["memory"]
    table.add_row("peak memory GB (plan)", f"{peak['peak_bytes'] / 1e9:.2f} "
                  f"({peak['plan_peak_bytes'] / 1e9:.2f})")  # fmt: skip
    Console().print(table)
    _write_json(args.json, report)
    return 0


def run_mismatch(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from ngrpo.bench.mismatch import mismatch_report
    from ngrpo.cli._common import (
        _check_preset,
        _prompts,
        _require_positive,
        _set_threads,
        _strategy_list,
        _write_json,
    )
    from ngrpo.method.exploration import answer_start_ids
    from ngrpo.utils.errors import NgrpoError

    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16}
    if args.dtype not in dtypes:
        raise NgrpoError(f"--dtype must be one of {', '.join(dtypes)}, got {args.dtype!r}")
    _check_preset(args.preset)
    strategies = _strategy_list(args.strategies)
    _require_positive(args, "prompts", "n", "prompt_tokens", "new_tokens", "micro_batch")
    _set_threads(args.threads)
    console = Console(stderr=True)
    with console.status("loading the model") as status:
        if args.preset is not None:
            from ngrpo.models.presets import preset_model

            model = preset_model(args.preset, device=args.device)
            vocab = model.config.vocab_size
            gen = torch.Generator().manual_seed(0)
            prompts = torch.randint(2, vocab, (args.prompts, args.prompt_tokens), generator=gen)
            prompts, marker, eos, pad = prompts.tolist(), [vocab - 1], [], 0
        else:
            from ngrpo.models.load import load_model_and_tokenizer

            model, tokenizer = load_model_and_tokenizer(args.model, device=args.device)
            prompts = _prompts(tokenizer, args.prompts)
            marker = answer_start_ids(tokenizer, "</think>")
            eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        model.float().eval()
        report = mismatch_report(
            model, prompts, n=args.n, new_tokens=args.new_tokens, marker=marker,
            eos_token_id=eos, pad_token_id=pad, dtype=dtypes[args.dtype], strategies=strategies,
            mix_rate=args.mix_rate, micro_batch=args.micro_batch, time_decode=args.time_decode,
            progress=lambda stage: status.update(f"mismatch: {stage}"),
            checkpoint=lambda partial: _write_json(args.json, partial),
        )  # fmt: skip
    report["model"] = args.preset or str(args.model)
    table = Table(title=f"rollout-learner gap, {report['model']}, {args.dtype}")
    for column in ("precision", "strategy", "|Δ| mean", "|Δ| max", "KL k3", "mixed |Δ| max",
                   "first layer > 1e-3"):  # fmt: skip
        table.add_column(column)
    for precision, entry in report["precisions"].items():
        for strategy in strategies:
            gap, layers = entry[strategy]["mismatch"], entry[strategy]["layers"]
            first = next((x["point"] for x in layers if x["rel_max"] > 1e-3), "-")
            table.add_row(precision, strategy, f"{gap['mismatch/logp_abs_mean']:.2e}",
                          f"{gap['mismatch/logp_abs_max']:.3f}", f"{gap['mismatch/kl_k3']:.1e}",
                          f"{gap['mismatch/mixed/logp_abs_max']:.3f}", first)  # fmt: skip
    Console().print(table)
    cost = report["old_logprobs_cost"]
    Console().print(f"pi_old recompute: {cost['recompute_s']:.3f} s vs forward+backward "
                    f"{cost['update_s']:.3f} s ({cost['recompute_over_update']:.2f}x)")  # fmt: skip
    _write_json(args.json, report)
    return 0
