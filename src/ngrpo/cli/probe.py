"""`ngrpo probe`: semantic-consistency probe, Gaussian noise vs neighbour mixing.

    ngrpo probe --model base --problems 64 --n 8 --shifts 0.05,0.1,0.2,0.3,0.5 --out runs/probe

Perturbs the input embeddings of the reasoning (before `</think>`) at matched relative shifts with
isotropic Gaussian noise and with neighbour mixing (definitions in `ngrpo.study.probe`), and
measures accuracy, agreement with the unperturbed answers and within-group diversity against the
shift. Writes `DIR/probe.json` (settings and one row per run) and `DIR/probe.png`, and prints the
table. The problems are the first `--problems` of the task split (fixed); `--seed` seeds the
sampling. `--seeds 3` (or `--seeds 7,8,9`) repeats the probe per sampling seed and reports every
column as a mean with its 95% interval over seeds (`ngrpo.study.probe.aggregate_probe`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ngrpo.cli._common import parse_seeds, progress_bar
from ngrpo.rewards import GRADERS
from ngrpo.utils.errors import NgrpoError

HELP = "Semantic-consistency probe: Gaussian noise vs neighbour mixing"
DTYPES = ("float32", "bfloat16", "float16")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "probe",
        help=HELP,
        description=(
            HELP + ": perturb the reasoning's input embeddings at matched relative shifts and "
            "measure accuracy and diversity against the shift."
        ),
    )
    parser.add_argument("--model", required=True, help="local HF model directory, or `base`")
    parser.add_argument("--problems", type=int, default=64, help="number of problems (fixed set)")
    parser.add_argument("--split", default="arith-id", help="task split the problems come from")
    parser.add_argument("--n", type=int, default=8, help="samples per problem")
    parser.add_argument(
        "--shifts", default="0.05,0.1,0.2,0.3,0.5",
        help="comma-separated relative shifts ‖ẽ − e(y)‖ / ‖e(y)‖",
    )  # fmt: skip
    parser.add_argument(
        "--perturbations", default="gaussian,neighbor", help="comma-separated: gaussian, neighbor"
    )
    parser.add_argument(
        "--mix-rate", type=float, default=1.0, help="fraction of reasoning positions perturbed"
    )
    parser.add_argument(
        "--no-reference", action="store_true",
        help="skip the reference runs with N-GRPO's own neighbour mixing",
    )  # fmt: skip
    parser.add_argument(
        "--weightings", default="release,policy",
        help="N-GRPO reference runs, comma-separated: release (the authors' code), policy (the "
        "paper's text); each is followed by a Gaussian run at its measured shift",
    )  # fmt: skip
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=None, help="sequences decoded together")
    parser.add_argument("--grader", default="math", choices=list(GRADERS))
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument(
        "--seeds", default=None,
        help="repeat per sampling seed and aggregate: a count (3 = 0,1,2) or a list (7,8,9)",
    )  # fmt: skip
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--out", type=Path, default=Path("runs/probe"), help="output directory")
    parser.set_defaults(func=handler)


def parse_floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise NgrpoError(f"{flag} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise NgrpoError(f"{flag} needs at least one value")
    return values


def _table(results: dict):
    from rich.table import Table

    cfg = results["config"]
    table = Table(
        title=f"semantic-consistency probe ({cfg['num_problems']} problems × {cfg['n']} samples, "
        f"mix rate {cfg['mix_rate']}, seeds {cfg.get('seeds', [cfg['seed']])})"
    )
    columns = [
        "perturbation", "target shift", "achieved shift", "accuracy [95% CI]", "agreement",
        "distinct answers", "edit distance", "distinct-2", "unparsed",
    ]  # fmt: skip
    for column in columns:
        table.add_column(
            column, justify="left" if column == "perturbation" else "right", no_wrap=True
        )
    for row in results["rows"]:
        low, high = row["accuracy_ci"]
        target = "—" if row["target_shift"] is None else f"{row['target_shift']:.3f}"
        name = row["perturbation"]
        if row.get("matched_to"):
            name += f" @ {row['matched_to']}"
        table.add_row(
            name, target, f"{row['achieved_shift']:.3f}",
            f"{row['accuracy']:.3f} [{low:.3f}, {high:.3f}]", f"{row['answer_agreement']:.3f}",
            f"{row['distinct_answers']:.2f}", f"{row['pairwise_edit']:.3f}",
            f"{row['distinct_2']:.3f}", f"{row['unparsed']:.3f}",
        )  # fmt: skip
    return table


def handler(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    from ngrpo.models.load import load_model_and_tokenizer
    from ngrpo.study.plots import plot_probe
    from ngrpo.study.probe import aggregate_probe, check_settings, run_probe
    from ngrpo.tasks import generate

    shifts = parse_floats(args.shifts, "--shifts")
    kinds = [k.strip() for k in args.perturbations.split(",") if k.strip()]
    weightings = [w.strip() for w in args.weightings.split(",") if w.strip()]
    seeds = [args.seed] if args.seeds is None else list(parse_seeds(args.seeds))
    if args.problems < 1 or args.n < 1 or args.max_new_tokens < 1:
        raise NgrpoError("--problems, --n and --max-new-tokens must be >= 1")
    problems = generate(args.split, num=args.problems, seed=0)
    check_settings(problems, shifts, kinds, args.n, args.mix_rate, weightings)  # before loading
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NgrpoError(f"cannot write to {str(args.out)!r}: {err.strerror}") from err
    model, tokenizer = load_model_and_tokenizer(args.model, device, getattr(torch, args.dtype))
    with progress_bar() as update:
        results = aggregate_probe([
            run_probe(
                model, tokenizer, problems, shifts=shifts, kinds=kinds, n=args.n,
                mix_rate=args.mix_rate, temperature=args.temperature, top_p=args.top_p,
                max_new_tokens=args.max_new_tokens, seed=seed, batch_size=args.batch_size,
                ngrpo_reference=not args.no_reference, weightings=weightings,
                grader=args.grader,
                progress=lambda stage, done, total, seed=seed: update(
                    f"{stage} (seed {seed})", done, total),
            )
            for seed in seeds
        ])  # fmt: skip
    results["config"].update(model=str(args.model), split=args.split, device=device)
    (args.out / "probe.json").write_text(json.dumps(results, indent=2) + "\n")
    plot_probe(results, args.out / "probe.png")
    console = Console()
    console.print(_table(results))
    console.print(
        f"{results['seconds']:.1f} s · results -> {args.out / 'probe.json'}; "
        f"plot -> {args.out / 'probe.png'}"
    )
    return 0
