"""How long `ngrpo train` takes to stop after SIGTERM, by the phase of the step it lands in.

    python benchmarks/stop_latency.py run --code after=src --code before=/work/main/src \
        --json benchmarks/cpu_stop_latency.json [--shape embedded|r1-1.5b] [--points 2]
    python benchmarks/stop_latency.py table benchmarks/cpu_stop_latency.json

`run`: one calibration run (the first `--code`, 2 steps, no signal) times the phases of step 2
(benchmarks/phase_trace.py); then, for each `--code` (a label and the `src` directory put first on
PYTHONPATH) and each phase (rollout, reference scoring, the update's first mini-batch, the update
after its first optimizer step), `--points` runs get SIGTERM at evenly spread offsets inside that
phase of step 2. Each records the time from the signal to the process's exit (a checkpoint
included), its exit code, its `stopped:` line and the phase the signal really landed in (read
from that run's own trace: phases move under load). A run that has not exited `--timeout` seconds
after its signal is killed and recorded as a lower bound. The JSON also records the machine, its
load average before and after, and the commands. `table` prints the Markdown table for the docs.

Shapes: `embedded` is `tiny_ngrpo` (16 prompts × 8 responses of up to 48 tokens, 2 optimizer
steps per step); `r1-1.5b` is DeepSeek-R1-Distill-Qwen-1.5B's shape with random weights (written
once to --model-dir, fp32, ~6 GB), LoRA r = 8, fp32, 2 prompts × 2 responses of up to 32 tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRACER = HERE / "phase_trace.py"
PHASES = ("rollout", "rewards", "reference", "before 1st optimizer step",
          "after 1st optimizer step", "between steps")  # fmt: skip
TARGETED = ("rollout", "reference", "before 1st optimizer step", "after 1st optimizer step")
SHAPES = {
    "embedded": ["--config", "tiny_ngrpo", "eval.every=0", "eval.at_start=false"],
    "r1-1.5b": [
        "--config", "tiny_ngrpo", "eval.every=0", "eval.at_start=false", "model.dtype=float32",
        "model.lora.r=8", "train.prompts_per_step=2", "train.mini_batch_prompts=1",
        "rollout.num_generations=2", "rollout.max_completion_length=32",
        "exploration.strategy=none",
    ],
}  # fmt: skip


def _overrides(shape: str, out: Path, model_dir: Path | None) -> list[str]:
    extra = [f"model.path={model_dir}"] if model_dir is not None else []
    return [*SHAPES[shape], *extra, f"output_dir={out}", "train.steps=4", "logging.save_every=0"]


def _events(trace: Path) -> list[tuple[float, str, str]]:
    events = []
    for line in trace.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            events.append((float(parts[0]), parts[1], parts[2]))
    return events


def _step_starts(events) -> list[float]:
    return [t for t, kind, phase in events if kind == "start" and phase == "step"]


def phase_at(events, when: float) -> str:
    """The phase of a step running at `when` (innermost traced call open then)."""
    open_, mini_batches = [], 0
    for t, kind, phase in events:
        if t > when:
            break
        if kind == "start":
            open_.append(phase)
            mini_batches = 0 if phase == "step" else mini_batches + (phase == "mini-batch")
        elif phase in open_:
            open_.remove(phase)
    if "step" not in open_:
        return "between steps"
    inner = [p for p in open_ if p != "step"]
    if inner and inner[-1] in ("rollout", "rewards", "reference"):
        return inner[-1]
    if mini_batches == 0:
        return "rollout"  # between the rollout and the reference: advantages (microseconds)
    if mini_batches == 1 and inner:
        return "before 1st optimizer step"
    return "after 1st optimizer step"  # the optimizer step itself, later mini-batches, metrics


def _windows(events) -> dict[str, tuple[float, float]]:
    """Each targeted phase's (start, end) in step 2, relative to the step's start."""
    step2 = _step_starts(events)[1]
    spans: dict[str, list[float]] = {}
    minis = 0
    for t, kind, phase in events:
        if t < step2:
            continue
        if kind == "end" and phase == "step":
            spans.setdefault("after 1st optimizer step", []).append(t - step2)
            break
        if phase == "mini-batch" and kind == "start":
            minis += 1
        name = {"rollout": "rollout", "reference": "reference"}.get(phase)
        if phase == "mini-batch":
            name = "before 1st optimizer step" if minis == 1 else "after 1st optimizer step"
        if name is not None:
            spans.setdefault(name, []).append(t - step2)
    return {name: (min(v), max(v)) for name, v in spans.items()}


def _start(code_src: str, shape: str, out: Path, trace: Path, model_dir, threads: int):
    env = {**os.environ, "PYTHONPATH": code_src, "TRACE": str(trace),
           "OMP_NUM_THREADS": str(threads)}  # fmt: skip
    command = [sys.executable, str(TRACER), "train", *_overrides(shape, out, model_dir)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True), command  # fmt: skip


def _wait_step(process, trace: Path, count: int, limit: float) -> float:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(process.communicate()[1][-2000:])
        if trace.exists():
            starts = _step_starts(_events(trace))
            if len(starts) >= count:
                return starts[count - 1]
        time.sleep(0.02)
    process.kill()
    raise RuntimeError(f"step {count} not started within {limit} s")


def calibrate(code_src: str, shape: str, model_dir, threads: int, work: Path, limit: float):
    trace = work / "calibration.trace"
    process, _ = _start(code_src, shape, work / "calibration", trace, model_dir, threads)
    _wait_step(process, trace, 3, limit)  # step 2 is complete once step 3 starts
    process.kill()
    process.wait()
    return _windows(_events(trace))


def trial(code_src, shape, model_dir, threads, work: Path, offset: float, timeout: float,
          limit: float) -> dict:  # fmt: skip
    work.mkdir(parents=True)
    trace = work / "trace"
    process, command = _start(code_src, shape, work / "run", trace, model_dir, threads)
    step2 = _wait_step(process, trace, 2, limit)
    time.sleep(max(0.0, step2 + offset - time.monotonic()))
    signalled = time.monotonic()
    process.terminate()  # SIGTERM
    try:
        stderr = process.communicate(timeout=timeout)[1]
        latency, code = time.monotonic() - signalled, process.returncode
    except subprocess.TimeoutExpired:
        process.kill()
        stderr = process.communicate()[1]
        latency, code = None, None
    lines = [line for line in stderr.splitlines() if line.startswith("stopped: ")]
    return {
        "offset_s": round(offset, 3), "phase": phase_at(_events(trace), signalled),
        "latency_s": None if latency is None else round(latency, 2),
        "lower_bound_s": timeout if latency is None else None, "exit_code": code,
        "stopped": lines[-1] if lines else None, "command": command[1:],
    }  # fmt: skip


def _machine() -> dict:
    import torch

    cpu = "unknown"
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return {
        "cpu": cpu, "cpus": os.cpu_count(), "platform": platform.platform(),
        "avx512_bf16": " avx512_bf16" in flags, "amx_bf16": " amx_bf16" in flags,
        "torch": torch.__version__, "python": platform.python_version(),
    }  # fmt: skip


def build_r1_shape(model_dir: Path) -> None:
    """DeepSeek-R1-Distill-Qwen-1.5B's shape with random weights (fp32) and the embedded
    tokenizer (its ids are all below the shape's vocabulary)."""
    if (model_dir / "config.json").exists():
        return
    from ngrpo.models.presets import preset_model
    from ngrpo.models.tokenizer import build_tokenizer, save_tokenizer

    model = preset_model("r1-distill-1.5b")
    model.save_pretrained(str(model_dir), safe_serialization=True)
    save_tokenizer(build_tokenizer(), model_dir)


def run(args: argparse.Namespace) -> None:
    codes = [tuple(c.split("=", 1)) for c in args.code]
    model_dir = None
    if args.shape == "r1-1.5b":
        model_dir = Path(args.model_dir)
        build_r1_shape(model_dir)
    work = Path(tempfile.mkdtemp(prefix="stop_latency_"))
    load_before = os.getloadavg()
    if args.offset:  # fixed offsets into step 2, no calibration run
        windows = {}
        for item in args.offset:
            phase, seconds = item.rsplit("=", 1)
            windows[phase] = (float(seconds), float(seconds))
    else:
        windows = calibrate(codes[0][1], args.shape, model_dir, args.threads, work, args.limit)
    trials = []
    for label, src in codes:
        for phase in TARGETED:
            if phase not in windows:
                continue
            start, end = windows[phase]
            for i in range(args.points):
                offset = start + (end - start) * (i + 0.5) / args.points
                result = trial(src, args.shape, model_dir, args.threads,
                               work / f"{label}-{phase.replace(' ', '_')}-{i}", offset,
                               args.timeout, args.limit)  # fmt: skip
                result.update(code=label, aimed_at=phase)
                print(json.dumps(result), flush=True)
                trials.append(result)
    report = {
        "what": "seconds from SIGTERM to the exit of `ngrpo train` (checkpoint write included), "
                "by the phase of step 2 the signal landed in",
        "shape": args.shape, "overrides": _overrides(args.shape, Path("OUT"), model_dir),
        "threads": args.threads, "codes": dict(codes), "machine": _machine(),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "calibration_windows_s": windows, "trials": trials,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


def table(path: str) -> str:
    """Markdown: median (and max) seconds to stop per phase and code, with the run counts."""
    report = json.loads(Path(path).read_text())
    codes = sorted(report["codes"], key=lambda c: c != "before")  # before, then after
    rows = ["| phase the signal landed in | " + " | ".join(codes) + " |",
            "| --- | " + " | ".join("---" for _ in codes) + " |"]  # fmt: skip
    for phase in PHASES:
        cells = []
        for code in codes:
            runs = [t for t in report["trials"] if t["code"] == code and t["phase"] == phase]
            if not runs:
                cells.append("–")
                continue
            done = [t["latency_s"] for t in runs if t["latency_s"] is not None]
            cut = [t["lower_bound_s"] for t in runs if t["latency_s"] is None]
            text = f"{statistics.median(done):.1f} s" if done else ""
            if len(done) > 1:
                text += f" (max {max(done):.1f})"
            if cut:
                text += f"{'; ' if text else ''}> {max(cut):.0f} s ×{len(cut)}"
            cells.append(f"{text}, n = {len(runs)}")
        if any(c != "–" for c in cells):
            rows.append(f"| {phase} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--code", action="append", required=True, help="LABEL=SRC_DIR (repeatable)")
    r.add_argument("--json", required=True)
    r.add_argument("--shape", choices=sorted(SHAPES), default="embedded")
    r.add_argument("--model-dir", default="/tmp/ngrpo_r1_1.5b_shape")
    r.add_argument("--points", type=int, default=2, help="signals per phase and code")
    r.add_argument(
        "--offset",
        action="append",
        default=[],
        help="PHASE=SECONDS into step 2 (repeatable): no calibration run",
    )
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--timeout", type=float, default=120, help="seconds after the signal")
    r.add_argument("--limit", type=float, default=600, help="seconds to reach step 2")
    t = sub.add_parser("table")
    t.add_argument("json")
    args = parser.parse_args()
    if args.command == "run":
        run(args)
    else:
        print(table(args.json))


if __name__ == "__main__":
    main()
