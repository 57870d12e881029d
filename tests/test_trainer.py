"""Training-loop tests on the embedded base model with tiny budgets: exact resume, a crash while
checkpointing, skipped non-finite steps, the run directory and CLI errors, stopping on SIGTERM /
SIGINT (`ngrpo train` subprocesses). The two-process run is in test_trainer_ddp.py; out of memory
and a full disk are in test_faults.py."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ngrpo.learner.update
import ngrpo.models.load
from ngrpo.cli import main
from ngrpo.config import load_config
from ngrpo.models.load import load_model
from ngrpo.trainer import checkpoint_dirs, load_run_config, read_metrics, train
from ngrpo.trainer.checkpoints import _recover_interrupted_writes

TIMING = ("time/", "rollout/seconds", "memory/")  # measured, not reproducible: left out
THROUGHPUT = ("tokens_per_s",)


def _overrides(base: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [
        f"model.path={base}", f"output_dir={out}", f"train.steps={steps}",
        "train.prompts_per_step=2", "train.mini_batch_prompts=1", "rollout.num_generations=2",
        "rollout.max_completion_length=16", "eval.every=0", "eval.at_start=false",
        "logging.save_every=1", "logging.keep_last=5", "exploration.mix_rate=0.3",
        "train.entropy_coef=0.01",  # a gradient even when a group's rewards are all equal
        *extra,
    ]  # fmt: skip


def _cfg(base: Path, out: Path, steps: int, *extra: str):
    return load_config("tiny_ngrpo", _overrides(base, out, steps, *extra))


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "model.safetensors"))


def _untimed(rows: list[dict]) -> list[dict]:
    return [
        {k: v for k, v in row.items() if not k.startswith(TIMING) and not k.endswith(THROUGHPUT)}
        for row in rows
    ]


@pytest.fixture(scope="module")
def straight_run(base_model_dir, tmp_path_factory) -> Path:
    """Four steps in one go (the reference for the resume tests)."""
    return train(_cfg(base_model_dir, tmp_path_factory.mktemp("straight"), 4))


def test_two_steps_stop_resume_two_steps_equals_four_straight(straight_run, base_model_dir,
                                                              tmp_path):  # fmt: skip
    out = tmp_path / "split"
    train(_cfg(base_model_dir, out, 2))
    assert [p.name for p in checkpoint_dirs(out)] == ["step-000001", "step-000002"]
    train(load_run_config(out, ["train.steps=4"]), resume=True)

    ref, got = (
        _weights(straight_run / "checkpoints/step-000004"),
        _weights(out / "checkpoints/step-000004"),
    )
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    ref_rows, got_rows = read_metrics(straight_run), read_metrics(out)
    assert [r["step"] for r in got_rows] == [1, 2, 3, 4]
    assert _untimed(got_rows) == _untimed(ref_rows)
    # the run really learned something (the equality is not between two untouched models)
    base = _weights(base_model_dir) if (base_model_dir / "model.safetensors").is_file() else None
    assert base is None or any(not torch.equal(base[k], got[k]) for k in got)
    assert any(row["actor/grad_norm"] > 0 for row in got_rows)


def test_a_crash_while_checkpointing_keeps_the_previous_checkpoint(
    straight_run, base_model_dir, tmp_path, monkeypatch
):
    out = tmp_path / "crash"
    real_save, saves = torch.save, []

    class Killed(Exception):
        pass

    def save_then_die(obj, path, *args, **kwargs):  # the 2nd trainer-state write dies mid-way
        saves.append(path)
        if len(saves) == 2:
            Path(path).write_bytes(b"partial")
            raise Killed
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_die)
    with pytest.raises(Killed):
        train(_cfg(base_model_dir, out, 2))
    monkeypatch.undo()

    assert [p.name for p in checkpoint_dirs(out)] == ["step-000001"]
    assert any(p.name.startswith(".tmp-step-000002") for p in (out / "checkpoints").iterdir())
    model = load_model(out / "checkpoints/step-000001")  # the previous checkpoint loads
    assert model.get_input_embeddings().weight.isfinite().all()
    assert [r["step"] for r in read_metrics(out)] == [1, 2]  # step 2 was logged, not saved

    train(load_run_config(out, ["train.steps=3"]), resume=True)  # from step 1: redo 2, then 3
    assert not any(p.name.startswith(".") for p in (out / "checkpoints").iterdir())
    ref, got = (
        _weights(straight_run / "checkpoints/step-000003"),
        _weights(out / "checkpoints/step-000003"),
    )
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert _untimed(read_metrics(out)) == _untimed(read_metrics(straight_run)[:3])


def test_a_damaged_newest_checkpoint_is_skipped_for_the_previous_one(straight_run, tmp_path,
                                                                    caplog):  # fmt: skip
    out = tmp_path / "damaged"
    shutil.copytree(straight_run, out)
    for late in ("step-000003", "step-000004"):  # as if killed after step 2's save ...
        shutil.rmtree(out / "checkpoints" / late)
    weights = out / "checkpoints/step-000002/model.safetensors"  # ... whose weights were lost
    weights.write_bytes(weights.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING, logger="ngrpo.trainer.checkpoints"):
        train(load_run_config(out, ["train.steps=3", f"output_dir={out}"]), resume=True)
    assert "skipping checkpoint step-000002" in caplog.text
    assert "model.safetensors is corrupted or truncated" in caplog.text
    ref, got = (
        _weights(straight_run / "checkpoints/step-000003"),
        _weights(out / "checkpoints/step-000003"),
    )
    assert all(torch.equal(ref[k], got[k]) for k in ref)  # resumed from step 1, redid 2 and 3
    assert _untimed(read_metrics(out)) == _untimed(read_metrics(straight_run)[:3])


def test_resume_replaces_a_best_model_of_the_discarded_trajectory(straight_run, tmp_path):
    from ngrpo.trainer.setup import _setup

    out = tmp_path / "best_after_resume"
    shutil.copytree(straight_run, out)
    for late in ("step-000003", "step-000004"):  # killed after step 4's eval, before its save
        shutil.rmtree(out / "checkpoints" / late)
    state_file = out / "checkpoints/step-000002/trainer_state.pt"
    state = torch.load(state_file, weights_only=True)
    state["best"], state["best_step"] = 0.5, 1  # the kept trajectory's best: step 1's eval
    torch.save(state, state_file)
    best = out / "best"  # ... but best/ holds step 4's model, whose eval row resume drops

    def discarded_best() -> None:
        shutil.rmtree(best, ignore_errors=True)
        shutil.copytree(straight_run / "checkpoints/step-000004", best)
        (best / "best.json").write_text(json.dumps({"step": 4, "value": 0.75}))

    def resume():
        run = _setup(load_run_config(out, [f"output_dir={out}"]), out, resume=True)
        run.rewards.close()
        run.pool.close()
        return run

    discarded_best()
    run = resume()
    assert (run.step, run.best, run.best_step) == (2, 0.5, 1)
    assert json.loads((best / "best.json").read_text()) == {"step": 1, "value": 0.5}
    ref = _weights(out / "checkpoints/step-000001")
    assert all(torch.equal(ref[k], v) for k, v in _weights(best).items())
    # the best step's checkpoint is gone too: best/ is removed and the best forgotten
    shutil.rmtree(out / "checkpoints/step-000001")
    discarded_best()
    run = resume()
    assert not best.exists() and (run.best, run.best_step) == (None, None)


def test_interrupted_replacement_of_best_is_rolled_back(tmp_path):
    (tmp_path / ".old-best-123").mkdir()
    (tmp_path / ".old-best-123" / "best.json").write_text("{}")
    (tmp_path / "checkpoints" / ".tmp-step-000003-9").mkdir(parents=True)
    _recover_interrupted_writes(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "checkpoints"]
    assert (tmp_path / "best" / "best.json").is_file()
    assert not list((tmp_path / "checkpoints").iterdir())


def test_non_finite_loss_skips_the_step_and_kl_zero_loads_no_reference(
    base_model_dir, tmp_path, monkeypatch, caplog
):
    real_loss, calls, loads = ngrpo.learner.update.grpo_loss, [], []
    real_load = ngrpo.models.load.load_model

    def nan_once(*args, **kwargs):
        loss, metrics = real_loss(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 1 else loss), metrics

    def counting_load(*args, **kwargs):
        loads.append(args[0])
        return real_load(*args, **kwargs)

    monkeypatch.setattr(ngrpo.learner.update, "grpo_loss", nan_once)
    monkeypatch.setattr(ngrpo.models.load, "load_model", counting_load)
    out = train(_cfg(base_model_dir, tmp_path / "nan", 2, "train.beta=0"))
    assert len(loads) == 1  # the policy only: no reference model at beta = 0
    assert "optimizer step skipped" in caplog.text
    first, second = read_metrics(out)
    assert first["train/skipped_updates"] == 1.0 and first["train/optimizer_steps"] == 1.0
    assert second["train/skipped_updates"] == 0.0 and second["train/skipped_total"] == 1.0
    values = [v for row in (first, second) for v in row.values() if not isinstance(v, str)]
    assert all(math.isfinite(v) for v in values)
    assert "loss/kl" not in first


METRIC_KEYS = (
    "reward/mean", "reward/accuracy", "rollout/response_len", "actor/clip_frac", "loss/kl",
    "actor/entropy", "actor/grad_norm", "rollout/mixed_frac", "rollout/embed_shift",
    "time/rollout_s", "time/learner_s", "learner/tokens_per_s", "rollout/tokens_per_s",
    "train/skipped_updates", "train/skipped_total", "train/world_size", "loss/pg", "train/lr",
    "memory/peak_bytes",
)  # fmt: skip


def test_cli_run_directory_layout(base_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    overrides = _overrides(
        base_model_dir,
        out,
        2,
        "logging.save_every=0",
        "eval.every=1",
        "eval.at_start=true",
        "eval.limit=2",
        "eval.n=2",
        "data.eval_sets=arith-id",
        "eval.best_metric=eval/arith-id/pass@1",
    )
    assert main(["train", "--config", "tiny_ngrpo", *overrides]) == 0
    assert capsys.readouterr().out.strip().endswith(str(out))

    assert load_config(out / "config.yaml") == load_config("tiny_ngrpo", overrides)
    rows = read_metrics(out)
    assert [(r["step"], r["type"]) for r in rows] == [
        (0, "eval"), (1, "train"), (1, "eval"), (2, "train"), (2, "eval"),
    ]  # fmt: skip
    for row in rows:
        if row["type"] == "train":
            assert set(METRIC_KEYS) <= set(row)
            assert row["train/world_size"] == 1.0
            assert row["memory/peak_bytes"] > 10**8  # CPU: peak RSS, the runtime included
            # the embedded task's semantic diversity: 8 responses per group
            assert 1 <= row["diversity/canonical_paths"] <= 8
            assert 0 <= row["diversity/rephrase_pairs"] <= 1
            assert 0 <= row["diversity/correct_paths"] <= row["diversity/canonical_paths"]
        else:
            assert "eval/arith-id/pass@1" in row
    (checkpoint,) = checkpoint_dirs(out)
    assert checkpoint.name == "step-000002"
    assert {"model.safetensors", "config.json", "tokenizer.json", "trainer_state.pt"} <= {
        p.name for p in checkpoint.iterdir()
    }
    state = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
    assert state["step"] == 2 and {"optimizer", "scheduler", "rng", "sampler"} <= set(state)
    load_model(checkpoint)
    best = json.loads((out / "best" / "best.json").read_text())
    evals = [r["eval/arith-id/pass@1"] for r in rows if r["type"] == "eval"]
    assert best["value"] == max(evals)
    load_model(out / "best")

    # an existing run is not overwritten; --resume on a finished run does nothing more
    assert main(["train", "--config", "tiny_ngrpo", *overrides]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--resume", str(out)]) == 0
    assert read_metrics(out) == rows


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.stepz=3"], "unknown config key 'train.stepz'"),
        (["exploration.strategy=banana"], "choose one of"),
        (["train.steps=0"], "train.steps must be an integer >= 1"),
        (["model.path=/nonexistent/model"], "model directory '/nonexistent/model' does not exist"),
        (["data.train=/nonexistent/train.jsonl"], "unknown benchmark"),
        (["oops"], "must look like key.sub=value"),
    ],
)
def test_cli_config_errors(overrides, message, tmp_path, capsys):
    argv = ["train", "--config", "tiny_grpo", f"output_dir={tmp_path / 'run'}", *overrides]
    assert main(argv) == 2
    _assert_one_error_line(capsys.readouterr().err, message)


def _assert_one_error_line(stderr: str, message: str) -> None:
    """The failure is one `error: ...` line, the last one written (after the run summary)."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and message in lines[-1], stderr
    assert sum(line.startswith("error:") for line in lines) == 1


def test_cli_data_errors(base_model_dir, tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "no answer here"}\n')
    base = ["train", "--config", "tiny_grpo", f"model.path={base_model_dir}", "eval.every=0",
            "eval.at_start=false"]  # fmt: skip
    assert main([*base, f"data.train={data}", f"output_dir={tmp_path / 'a'}"]) == 2
    _assert_one_error_line(capsys.readouterr().err, f"{data}:2: no answer")
    data.write_text('{"problem": "1+1?", "answer": "2"}\n{not json\n')
    assert main([*base, f"data.train={data}", f"output_dir={tmp_path / 'b'}"]) == 2
    _assert_one_error_line(capsys.readouterr().err, f"{data}:2: invalid JSON")
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    _assert_one_error_line(capsys.readouterr().err, "is not a run directory")


def test_linear_mix_rate_schedule_reaches_the_rollouts_and_the_table_drift_is_logged(
    base_model_dir, tmp_path
):
    def rows(name: str, *extra: str) -> list[dict]:
        cfg = _cfg(base_model_dir, tmp_path / name, 3, "logging.save_every=0", *extra)
        return [r for r in read_metrics(train(cfg)) if r["type"] == "train"]

    constant = rows("constant", "exploration.mix_rate=1.0", "exploration.entropy_threshold=null")
    linear = rows("linear", "exploration.mix_rate=1.0", "exploration.entropy_threshold=null",
                  "exploration.mix_rate_schedule=linear")  # fmt: skip
    assert [r["exploration/mix_rate"] for r in constant] == [1.0, 1.0, 1.0]
    assert [r["exploration/mix_rate"] for r in linear] == pytest.approx([1.0, 2 / 3, 1 / 3])
    # rate 1 with no entropy gate mixes every eligible position; the schedule lowers it
    assert constant[0]["rollout/mixed_frac"] == linear[0]["rollout/mixed_frac"] == 1.0
    assert linear[2]["rollout/mixed_frac"] < 1.0 == constant[2]["rollout/mixed_frac"]
    drift = [r["embedding/drift"] for r in constant]  # relative to the table at step 1's start
    assert 0.0 < drift[0] < drift[2]
