"""The study: the demo's comparison of methods, its statistics and report, the probe, the plots.

- `demo`: `run_demo`, GRPO vs N-GRPO vs STHT-style noise on the embedded task;
- `report`: per-seed results to tables, effect sizes and `report.md` (pure functions);
- `probe`: the semantic-consistency probe (Gaussian noise vs neighbour mixing at matched shifts);
- `stats`: means with Student-t intervals over seeds, paired differences, verdicts;
- `plots`: the PNGs (matplotlib, headless).
"""
