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
}
BASELINES = ("grpo", "stht")  # every other method is compared with each of these, paired by seed
EVAL_SPLITS = ("arith-id", "arith-ood")
# Sampling of every evaluation (final and training curves), as in the paper: mixing off.
EVAL_TEMPERATURE, EVAL_TOP_P, EVAL_MAX_NEW_TOKENS = 0.6, 0.95, 64
CURVE_N = 4  # samples per problem of the evaluations during training
DEFAULT_SEEDS, FULL_MIN_SEEDS = 3, 5  # seeds of `ngrpo demo` and `ngrpo demo --full`


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
    base_seed: int = 0
    full: bool = False  # also N-GRPO with the paper text's weights; >= 5 seeds
    preset: str = "default"  # "quick" for the smoke run (the reproduce command says --quick)

    @classmethod
    def quick(
        cls, out: Path, seeds: tuple[int, ...] | None = None, full: bool = False
    ) -> DemoSettings:
        return cls(
            out=out, seeds=seeds or (0,), steps=4, eval_every=2, curve_limit=20, final_limit=20,
            final_n=4, probe_problems=8, probe_n=2, full=full, preset="quick",
        )  # fmt: skip

    @classmethod
    def default(
        cls, out: Path, seeds: tuple[int, ...] | None = None, full: bool = False
    ) -> DemoSettings:
        """The default run (3 seeds), or with `full` the paper-text method too and 5 seeds."""
        count = FULL_MIN_SEEDS if full else DEFAULT_SEEDS
        return cls(out=out, seeds=seeds or tuple(range(count)), full=full)

    @property
    def methods(self) -> dict[str, Method]:
        return FULL_METHODS if self.full else METHODS

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
        if self.final_n < 2:
            raise NgrpoError(f"final_n must be >= 2 (for the sampling error), got {self.final_n}")


# Rollout diagnostics averaged over each run's training steps, one table column each.
DIVERSITY_KEYS = (
    "diversity/distinct_answers", "diversity/distinct_2", "diversity/pairwise_edit",
    "diversity/zero_adv_frac", "rollout/mixed_frac", "rollout/embed_shift",
    "rollout/neighbor_weight", "rollout/neighbor_synonym_frac",
)  # fmt: skip
