"""What the demo compares and with what budget: the methods, the evaluation protocol, the seeds.

`ngrpo.study.demo` runs these settings and `ngrpo.study.report` reads them back to label and
compare the results; neither imports the other's runner or report. Adding a method is one line of
`METHODS` / `FULL_METHODS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ngrpo.utils.errors import NgrpoError


@dataclass(frozen=True)
class Method:
    """One compared method: a shipped config and the `key.sub=value` overrides applied to it."""

    label: str  # shown in tables and plots
    config: str
    overrides: tuple[str, ...] = ()


# The released code's settings where they differ from the shipped tiny_ngrpo (DESIGN §2).
FULL_RELEASE = (
    "exploration.neighbor_weights=release", "exploration.neighbor_table=output",
    "train.soft_input_grad=none", "train.clip_ratio_c=3.0",
)  # fmt: skip
# key (run directories, results.json) -> method
METHODS: dict[str, Method] = {
    "grpo": Method("GRPO", "tiny_grpo"),
    "n-grpo": Method("N-GRPO (release)", "tiny_ngrpo", ("exploration.neighbor_weights=release",)),
    "stht": Method("STHT-style", "tiny_stht"),
}
FULL_METHODS: dict[str, Method] = {
    **METHODS,
    "n-grpo-paper": Method(
        "N-GRPO (paper text)", "tiny_ngrpo", ("exploration.neighbor_weights=policy",)
    ),
    # The control for mixing around the argmax: the anchor is the sampled token (DESIGN §2).
    "n-grpo-sampled": Method(
        "N-GRPO (sampled anchor)",
        "tiny_ngrpo",
        ("exploration.neighbor_weights=release", "exploration.anchor=sampled"),
    ),  # fmt: skip
    # The authors' full released reading on the embedded model (an untied head): their weights,
    # neighbours searched in the output projection, no gradient into candidate rows, dual clip 3.
    "n-grpo-full": Method("N-GRPO (full release)", "tiny_ngrpo", FULL_RELEASE),
}
# The diagnosis of the long setting (README "Results"): N-GRPO (release) with ONE setting changed,
# each compared with N-GRPO (release) and GRPO paired by seed. Trained only in the long setting.
DIAGNOSIS_METHODS: dict[str, Method] = {
    "n-grpo-anneal": Method(
        "N-GRPO (release), mix rate annealed",
        "tiny_ngrpo",
        ("exploration.neighbor_weights=release", "exploration.mix_rate_schedule=linear"),
    ),
    "n-grpo-nograd": Method(
        "N-GRPO (release), no candidate-row gradient",
        "tiny_ngrpo",
        ("exploration.neighbor_weights=release", "train.soft_input_grad=none"),
    ),
    "n-grpo-output": Method(
        "N-GRPO (release), output-table neighbours",
        "tiny_ngrpo",
        ("exploration.neighbor_weights=release", "exploration.neighbor_table=output"),
    ),
    "n-grpo-gate": Method(
        "N-GRPO (release), strict gate (entropy >= 1.0)",
        "tiny_ngrpo",
        ("exploration.neighbor_weights=release", "exploration.entropy_threshold=1.0"),
    ),
}
BASELINES = ("grpo", "stht")  # every other method is compared with each of these, paired by seed
N_GRPO = (
    "n-grpo",
    "n-grpo-paper",
    "n-grpo-sampled",
    "n-grpo-full",
)  # the methods the hypotheses are about
# Final evaluation: in distribution, and the two out-of-distribution axes (larger start values;
# longer chains than training ever saw).
EVAL_SPLITS = ("arith-id", "arith-ood", "arith-long")
SPLIT_NAMES = {"arith-id": "ID", "arith-ood": "OOD", "arith-long": "long"}  # their short names
PASSK_SPLITS = ("arith-id", "arith-ood")  # the large-k pass@k evaluation (H2)
# Sampling of every evaluation (final and training curves), as in the paper: mixing off.
EVAL_TEMPERATURE, EVAL_TOP_P, EVAL_MAX_NEW_TOKENS = 0.6, 0.95, 64
CURVE_N = 4  # samples per problem of the evaluations during training
DEFAULT_SEEDS, FULL_MIN_SEEDS = 3, 5  # seeds of `ngrpo demo`; the least `--full` accepts
FULL_SUBSET_SEEDS = 10  # seeds of the large-k evaluation and of the long setting in --full
# The long setting: the two compared methods, then the diagnosis (one switch each, README). The
# full release comes right after the first switch (the study reports it whatever the gap), then
# the strict gate (D4, a dose test of D1); the 10-seed logs already speak against D2 and D3
# (long_diagnosis.md), the last two switches.
LONG_METHODS = (
    "grpo", "n-grpo", "n-grpo-anneal", "n-grpo-full", "n-grpo-gate", "n-grpo-nograd",
    "n-grpo-output",
)  # fmt: skip
# Stages in the order a run computes them (most informative first): `long` the long setting's
# GRPO and N-GRPO (release), `diagnosis` its other methods, `main` the 20-step comparison (with
# the large-k evaluation and the probe). `long` and `main` go seed by seed; `diagnosis` method
# by method in the order of `long_methods` (its most likely explanation first, README), so that
# whatever finishes is a complete answer for the methods it covers.
STAGES = ("long", "diagnosis", "main")
LONG_COMPARED = ("grpo", "n-grpo")  # the `long` stage; the rest of long_methods is `diagnosis`
FULL_SEEDS = 20  # seeds of `ngrpo demo --full`: sized for an MDE of 3 points (docs/study.md)


@dataclass(frozen=True)
class DemoSettings:
    """Budget of a demo run (`quick` shrinks everything to a smoke run of a few minutes)."""

    out: Path = Path("ngrpo-demo")
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 20  # the tiny configs' own length
    eval_every: int = 10
    curve_limit: int = 100  # ID problems evaluated during training (n = 4)
    final_limit: int = 100  # problems per split in the final evaluation
    final_n: int = 16
    probe_problems: int = 32
    probe_n: int = 8
    probe_shifts: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5)  # matched-shift grid of the probe
    probe_seeds: int = 5  # the probe runs on the first `probe_seeds` seeds only
    base_seed: int = 0
    full: bool = False  # the --full methods, the large-k pass@k and the long-training setting
    preset: str = "default"  # "quick" for the smoke run (the reproduce command says --quick)
    # Large-k pass@k (H2): `passk_n` samples on the first `passk_limit` problems of each of
    # PASSK_SPLITS, for the base and every method on the first `passk_seeds` seeds (0: off).
    passk_n: int = 0
    passk_limit: int = 0
    passk_seeds: int = 0
    # Long-training setting: `long_methods` trained for `long_steps` on the first `long_seeds`
    # seeds, evaluated as the main runs (and at large k); 0 steps: off.
    long_steps: int = 0
    long_seeds: int = 0
    long_methods: tuple[str, ...] = ()
    long_passk: bool = False  # the large-k evaluation also after the long training (costly)
    # Which stages compute their missing units, in this order (see `STAGES`); the report is
    # written from every finished unit either way and lists the missing ones as pending.
    stages: tuple[str, ...] = ("long", "diagnosis", "main")

    @classmethod
    def quick(
        cls, out: Path, seeds: tuple[int, ...] | None = None, full: bool = False
    ) -> DemoSettings:
        extra = dict(passk_n=8, passk_limit=4, passk_seeds=1, long_steps=6, long_seeds=1,
                     long_methods=("grpo", "n-grpo", "n-grpo-anneal")) if full else {}  # fmt: skip
        return cls(
            out=out, seeds=seeds or (0,), steps=4, eval_every=2, curve_limit=20, final_limit=20,
            final_n=4, probe_problems=8, probe_n=2, full=full, preset="quick", **extra,
        )  # fmt: skip

    @classmethod
    def default(
        cls, out: Path, seeds: tuple[int, ...] | None = None, full: bool = False
    ) -> DemoSettings:
        """The default run (3 seeds), or with `full` every method on `FULL_SEEDS` seeds, pass@k
        up to k = 256 on `FULL_SUBSET_SEEDS` of them, and the 100-step setting (GRPO, N-GRPO
        (release) and the diagnosis switches; no large-k evaluation after it) on as many."""
        if not full:
            return cls(out=out, seeds=seeds or tuple(range(DEFAULT_SEEDS)))
        return cls(
            out=out, seeds=seeds or tuple(range(FULL_SEEDS)), full=True,
            passk_n=256, passk_limit=50, passk_seeds=FULL_SUBSET_SEEDS,
            long_steps=100, long_seeds=FULL_SUBSET_SEEDS, long_methods=LONG_METHODS,
        )  # fmt: skip

    @property
    def methods(self) -> dict[str, Method]:
        """The methods of the 20-step comparison."""
        return FULL_METHODS if self.full else METHODS

    @property
    def all_methods(self) -> dict[str, Method]:
        """Every method a unit may train: `methods` and, with `full`, the diagnosis switches."""
        return {**self.methods, **DIAGNOSIS_METHODS} if self.full else self.methods

    def validate(self) -> None:
        """Raise `NgrpoError` naming the bad setting."""
        if not self.seeds:
            raise NgrpoError("--seeds: at least one seed is needed")
        if len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise NgrpoError(f"--seeds must be distinct non-negative integers, got {self.seeds}")
        if self.full and self.preset != "quick" and len(self.seeds) < FULL_MIN_SEEDS:
            raise NgrpoError(
                f"--full compares >= {FULL_MIN_SEEDS} seeds, got {len(self.seeds)} "
                "(--quick lifts this for smoke runs)"
            )
        for name in ("final_n", "passk_n"):
            value = getattr(self, name)
            if value and (value < 2 or value & (value - 1)):
                raise NgrpoError(
                    f"{name} must be a power of two >= 2 (pass@k is reported at k = 1, 2, 4, ..., "
                    f"n; the sampling error needs 2 samples), got {value}"
                )
        unknown = [m for m in self.long_methods if m not in self.all_methods]
        if unknown:
            raise NgrpoError(f"long_methods: {unknown} are not methods of this run")
        bad = [s for s in self.stages if s not in STAGES]
        if bad:
            raise NgrpoError(f"--stages: unknown {bad}; choose from {', '.join(STAGES)}")
        if self.long_steps and self.long_steps == self.steps:
            raise NgrpoError(f"long_steps must differ from steps ({self.steps})")

    @property
    def probe_seed_list(self) -> tuple[int, ...]:
        return self.seeds[: self.probe_seeds]

    @property
    def passk_seed_list(self) -> tuple[int, ...]:
        return self.seeds[: self.passk_seeds] if self.passk_n else ()

    @property
    def long_seed_list(self) -> tuple[int, ...]:
        return self.seeds[: self.long_seeds] if self.long_steps else ()


# Rollout diagnostics averaged over each run's training steps, one table column each.
DIVERSITY_KEYS = (
    "diversity/distinct_answers", "diversity/distinct_2", "diversity/pairwise_edit",
    "diversity/zero_adv_frac", "rollout/mixed_frac", "rollout/embed_shift",
    "rollout/neighbor_weight", "rollout/neighbor_synonym_frac",
)  # fmt: skip
# Semantic diversity of the training groups (H1), averaged over steps like DIVERSITY_KEYS and
# compared between methods paired by seed; `reward/accuracy` is the validity of those rollouts.
SEMANTIC_KEYS = (
    "diversity/canonical_paths", "diversity/rephrase_pairs", "diversity/correct_paths",
    "diversity/distinct_answers", "reward/accuracy",
)  # fmt: skip
# Per-step series kept from the long-training runs (where exploration should matter).
LONG_SERIES_KEYS = (
    "reward/accuracy", "actor/entropy", "reward/std_in_group", "diversity/zero_adv_frac",
    "diversity/canonical_paths", "rollout/mixed_frac", "rollout/embed_shift",
    "rollout/neighbor_weight", "rollout/neighbor_synonym_frac", "actor/clip_frac",
    "actor/grad_norm", "actor/ratio_max", "embedding/drift", "exploration/mix_rate",
    "rollout/response_len", "diversity/distinct_answers",
)  # fmt: skip
