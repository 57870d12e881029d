"""`ngrpo train`: train a policy with GRPO / N-GRPO from a YAML config.

    ngrpo train --config tiny_ngrpo train.steps=20 output_dir=runs/x
    ngrpo train --resume runs/x [train.steps=40]
    torchrun --nproc_per_node 2 -m ngrpo train --config tiny_ngrpo   # docs/guides/training.md

Under a launcher (torchrun, accelerate launch) only the process of rank 0 draws the progress bar
and prints; the others train silently.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

from ngrpo.utils.errors import STOPPED_EXIT_CODE

HELP = "Train a policy with GRPO / N-GRPO from a YAML config"
EPILOG = f"""\
stopping (SIGTERM from a scheduler, Ctrl-C):
  the first signal finishes the current step, writes a checkpoint and exits with
  {STOPPED_EXIT_CODE}; `ngrpo train --resume RUN_DIR` then continues exactly. A second signal
  exits at once with 128 + its number (130 SIGINT, 143 SIGTERM), the previous checkpoint intact.
  Under torchrun, give the workers time to finish a step: --shutdown-timeout SECONDS (default 30).

exit codes:
  0 finished; 2 an error you can fix (one `error:` line: a setting, out of memory, a full disk);
  {STOPPED_EXIT_CODE} stopped by a signal with a checkpoint (resumable); 130 / 143 interrupted."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help=HELP, description=HELP + ". Overrides are key.sub=value pairs.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="YAML file, or a shipped name (tiny_ngrpo, ...)")
    source.add_argument("--resume", metavar="RUN_DIR", help="continue a run where it stopped")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    parser.set_defaults(func=handler)


def _evaluation_line(cfg) -> str:
    """What will be evaluated, and when (the start banner's second line)."""
    e = cfg.eval
    if not cfg.data.eval_sets or not (e.every > 0 or e.at_start):
        why = "data.eval_sets is empty" if not cfg.data.eval_sets else "eval.every=0"
        return f"evaluation: none ({why})"
    when = [w for w, on in (("at start", e.at_start), (f"every {e.every} steps", e.every > 0),
                            ("at the end", e.every > 0)) if on]  # fmt: skip
    when_text = " and ".join(when) if len(when) < 3 else f"{when[0]}, {when[1]} and {when[2]}"
    best = f"; best/ by {e.best_metric}" if e.best_metric else ""
    samples = f"{e.n} sample{'s' if e.n != 1 else ''}"
    return (f"evaluation: {', '.join(cfg.data.eval_sets)} ({samples} per problem of at most "
            f"{e.limit or 'all'} problems, {when_text}){best}")  # fmt: skip


def handler(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ngrpo.cli._common import progress_bar
    from ngrpo.config import derived_values, load_config, method_name
    from ngrpo.trainer import checkpoint_dirs, load_run_config, train

    if args.resume:
        cfg = load_run_config(args.resume, args.overrides)
        if str(cfg.output_dir) != str(args.resume):
            cfg.output_dir = str(args.resume)
    else:
        cfg = load_config(args.config, args.overrides)
    main_process = os.environ.get("RANK", "0") == "0"  # set by torchrun / accelerate launch
    console = Console(stderr=True, quiet=not main_process)
    derived = derived_values(cfg)
    console.print(
        f"[bold]{method_name(cfg.exploration.strategy)}[/] on {cfg.data.train} · "
        f"model {cfg.model.path}"
        f"{f' + LoRA r={cfg.model.lora.r}' if cfg.model.lora.enabled else ''} · "
        f"{cfg.train.steps} steps × {derived['rollouts_per_step']} rollouts "
        f"({cfg.train.prompts_per_step} prompts × {cfg.rollout.num_generations}) · "
        f"{derived['optimizer_steps_per_step']} optimizer steps per step · "
        f"up to {derived['max_tokens_per_step']:,} tokens per step → {cfg.output_dir}"
    )
    console.print(_evaluation_line(cfg), style="dim")
    if args.resume:
        newest = checkpoint_dirs(Path(args.resume).expanduser())
        console.print(
            f"resumed from step {int(newest[-1].name.split('-')[1])} ({newest[-1]})" if newest
            else f"no complete checkpoint in {args.resume}: starting from step 0"
        )  # fmt: skip
    last_eval: dict = {}
    bar = progress_bar() if main_process else contextlib.nullcontext(lambda *_: None)
    with bar as update:

        def progress(kind: str, step: int, total: int, metrics: dict) -> None:
            if kind == "eval":
                last_eval.update(metrics)
                return
            info = " ".join(
                f"{key.split('/')[-1]} {metrics[key]:.3g}"
                for key in ("reward/mean", "rollout/mixed_frac", "loss/kl")
                if key in metrics
            )
            update("training", step, total, info)

        run_dir = train(cfg, resume=bool(args.resume), progress=progress)
    if not main_process:
        return 0
    if last_eval:  # every evaluation metric is a rate: shown in %, as `ngrpo eval` shows them
        table = Table(title="last evaluation (%)")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key in sorted(last_eval):
            table.add_row(key, f"{100 * last_eval[key]:.1f}")
        Console().print(table)
    print(run_dir)
    return 0
