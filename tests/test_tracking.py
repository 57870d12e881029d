"""Trackers with the real libraries in their offline / local modes, and the completion files.

One short N-GRPO run reports to all five trackers at once (`logging.report_to`), then `--resume`
adds a step; each test reads back what one tracker stored, through that library's own reader or
its documented file format: the metrics at their steps, the config, the completion tables, and one
run (the same id) after the resume. wandb: `WANDB_MODE=offline`, its `.wandb` transaction log
read record by record; MLflow: a SQLite store in the run directory, read with `MlflowClient`;
Trackio: `TRACKIO_DIR` in the test's folder, read with its `SQLiteStorage`; SwanLab: offline
mode, its `.swanlab` log read with its `DataStoreReader`; TensorBoard: its `EventAccumulator`.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from tracked_runs import GROUP, PROJECT, PROMPTS, tracked_overrides

from ngrpo.cli import main
from ngrpo.config import load_config
from ngrpo.tracking import BACKENDS, IDS_FILE, RunInfo, Tracker, open_tracker
from ngrpo.tracking.backends import _Entry, mlflow_key
from ngrpo.tracking.completions import read_completions
from ngrpo.trainer import read_metrics
from ngrpo.trainer.reporting import start_tracker, tracker_names


def _train_rows(run: Path) -> dict[int, dict]:
    return {r["step"]: r for r in read_metrics(run) if r["type"] == "train"}


# ------------------------------------------------------------------------------- the stores


def _wandb_records(path: str):
    """The records of a `.wandb` file: a 7-byte header, then a LevelDB-style log of 32 KiB
    blocks, each record `crc32 (4) | length (2) | type (1) | data` (full, first, middle, last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            yield record


@pytest.mark.slow
def test_wandb_offline_run_holds_metrics_config_tables_and_resumes_the_same_run(tracked_run):
    files = sorted(glob.glob(str(tracked_run / "wandb" / "offline-run-*" / "run-*.wandb")))
    assert len(files) == 2  # the first start and the resume
    ids = json.loads((tracked_run / IDS_FILE).read_text())
    history, run_ids, config = {}, set(), {}
    for path in files:
        for record in _wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run_ids.add(record.run.run_id)
                config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
                assert record.run.project == PROJECT and list(record.run.tags) == ["ci"]
            elif kind == "history":
                row = {i.key or "/".join(i.nested_key): i.value_json for i in record.history.item}
                history.setdefault(int(row["_step"]), {}).update(row)
    assert run_ids == {ids["wandb"]}
    assert config["rollout"]["num_generations"] == GROUP
    for step, row in _train_rows(tracked_run).items():
        assert float(history[step]["reward/mean"]) == pytest.approx(row["reward/mean"])
    assert "eval/arith-id/mean@n" in history[2]
    tables = [s for s, row in history.items() if row.get("completions/_type") == '"table-file"']
    assert tables == [1, 2, 3]
    assert int(history[1]["completions/nrows"]) == PROMPTS * GROUP


@pytest.mark.slow
def test_mlflow_store_holds_metrics_params_tables_and_resumes_the_same_run(tracked_run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tracked_run / 'mlflow' / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == PROJECT]
    (run,) = client.search_runs([experiment.experiment_id])  # one run, resumed
    assert run.info.run_id == json.loads((tracked_run / IDS_FILE).read_text())["mlflow"]
    assert run.data.params["rollout.num_generations"] == str(GROUP)
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "reward/mean")}
    assert history == {s: r["reward/mean"] for s, r in _train_rows(tracked_run).items()}
    assert mlflow_key("eval/arith-id/mean@n") in run.data.metrics  # `@` is not allowed
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "tables/completions")]
    assert artifacts == [f"tables/completions/step-00000{s}.json" for s in (1, 2, 3)]
    table = json.loads(Path(client.download_artifacts(run.info.run_id, artifacts[0])).read_text())
    assert len(table["data"]) == PROMPTS * GROUP and "mixing" in table["columns"]


@pytest.mark.slow
def test_trackio_local_store_holds_metrics_config_tables_in_one_run(tracked_run):
    os.environ["TRACKIO_DIR"] = str(tracked_run.parent / "trackio")
    try:
        from trackio.sqlite_storage import SQLiteStorage

        assert SQLiteStorage.get_runs(PROJECT) == ["run"]
        logs = SQLiteStorage.get_logs(PROJECT, "run")
        config = SQLiteStorage.get_run_config(PROJECT, "run")
    finally:
        os.environ.pop("TRACKIO_DIR")
    assert config["rollout"]["num_generations"] == GROUP
    by_step: dict[int, dict] = {}
    for row in logs:
        by_step.setdefault(row["step"], {}).update(row)
    for step, row in _train_rows(tracked_run).items():
        assert by_step[step]["reward/mean"] == pytest.approx(row["reward/mean"])
        table = by_step[step]["completions"]
        assert table["_type"] == "trackio.table" and len(table["_value"]) == PROMPTS * GROUP


@pytest.mark.slow
def test_swanlab_offline_log_holds_metrics_tables_and_resumes_the_same_run(tracked_run):
    from google.protobuf.json_format import MessageToDict
    from swanlab.proto.swanlab.record.v1.record_pb2 import Record
    from swanlab.sdk.internal.core_python.store import DataStoreReader

    files = sorted(glob.glob(str(tracked_run / "swanlab" / "run-*" / "run-*.swanlab")))
    ids, scalars, tables = set(), {}, []
    for path in files:
        reader = DataStoreReader()
        reader.open(path)
        for data in reader:
            record = Record()
            record.ParseFromString(data)
            entry = MessageToDict(record)
            if "start" in entry:
                ids.add(entry["start"]["id"])
            elif "scalar" in entry and entry["scalar"]["key"] == "reward/mean":
                value = entry["scalar"]["value"].get("number", 0.0)  # proto3 leaves out a 0
                scalars[int(entry["scalar"]["step"])] = value
            elif "media" in entry and entry["media"]["key"] == "completions":
                tables.append(int(entry["media"]["step"]))
        reader.close()
    assert len(files) == 2 and ids == {json.loads((tracked_run / IDS_FILE).read_text())["swanlab"]}
    assert scalars == pytest.approx(
        {s: r["reward/mean"] for s, r in _train_rows(tracked_run).items()}
    )
    assert sorted(tables) == [1, 2, 3]
    config = (Path(files[0]).parent / "files" / "config.yaml").read_text()
    assert "num_generations" in config


@pytest.mark.slow
def test_tensorboard_events_hold_metrics_and_completion_text(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked_run / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    values = {e.step: e.value for e in events.Scalars("reward/mean")}
    assert values == pytest.approx(
        {s: r["reward/mean"] for s, r in _train_rows(tracked_run).items()}
    )
    texts = [e.step for e in events.Tensors("completions/text_summary")]
    assert sorted(texts) == [1, 2, 3]


# --------------------------------------------------------------------------- completion files


@pytest.mark.slow
def test_completion_files_record_every_mixed_position(tracked_run):
    from ngrpo.models.load import load_tokenizer

    specials = set(load_tokenizer("base").all_special_tokens)
    for step in (1, 2, 3):
        rows = read_completions(tracked_run / "completions" / f"step-{step:06d}.jsonl")
        assert len(rows) == PROMPTS * GROUP
        assert {(r["group"], r["sample"]) for r in rows} == {
            (g, s) for g in range(PROMPTS) for s in range(GROUP)
        }
        row = _train_rows(tracked_run)[step]
        mixed = sum(len(r["mixed"]) for r in rows)
        assert mixed == row["rollout/mixed_tokens"]  # the step's own count
        for r in rows:
            words = [t for t in r["tokens"] if t not in specials]  # the response skips EOS
            assert r["sep"].join(words) == r["response"] and len(r["tokens"]) == r["length"]
            assert r["rewards"] == {"math": r["reward"]}
            for m in r["mixed"]:
                assert r["tokens"][m["position"]] == m["token"]
                total = m["anchor_weight"] + sum(n["weight"] for n in m["neighbors"])
                assert total == pytest.approx(1.0, abs=1e-5)  # rounded to 6 places
                assert m["next"] == (r["tokens"] + [None])[m["position"] + 1]
                assert m["noise_norm"] is None  # neighbor mixing adds no noise
    assert mixed > 0
    evals = read_completions(tracked_run / "completions" / "eval-step-000002.jsonl")
    assert len(evals) == 2 * 2 and all(r["mixed"] == [] for r in evals)


# -------------------------------------------------------------------------- config and errors


def test_aliases_of_trl_and_verl_choose_the_trackers():
    cfg = load_config("tiny_grpo", [
        "trainer.logger=[console,wandb]", "trainer.project_name=proj",
        "trainer.experiment_name=exp", "logging.tensorboard=true",
    ])  # fmt: skip
    assert tracker_names(cfg) == ["wandb", "tensorboard"]
    assert (cfg.logging.project, cfg.logging.run_name) == ("proj", "exp")
    assert load_config("tiny_grpo", ["report_to=MLflow,trackio"]).logging.report_to == [
        "mlflow", "trackio",
    ]  # fmt: skip
    assert load_config("tiny_grpo", ["report_to=none"]).logging.report_to == []


def test_unknown_tracker_is_a_config_error(tmp_path, capsys):
    assert main(["train", "--config", "tiny_grpo", f"output_dir={tmp_path}", "report_to=all"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: logging.report_to: unknown tracker 'all'")


def test_a_tracker_not_installed_stops_before_any_work_naming_its_extra(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(BACKENDS, "wandb", _Entry("ngrpo_missing_wandb", BACKENDS["wandb"].start))
    out = tmp_path / "run"
    argv = ["train", "--config", "tiny_grpo", "model.path=base", f"output_dir={out}",
            "logging.report_to=[wandb,tensorboard]"]  # fmt: skip
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines[-1] == (
        "error: logging.report_to=wandb needs the ngrpo_missing_wandb package: "
        'pip install "ngrpo[wandb]"'
    )
    assert sum(line.startswith("error:") for line in lines) == 1
    assert not out.exists()  # nothing was built


def test_only_rank_zero_reports(tmp_path):
    cfg = load_config("tiny_grpo", ["logging.report_to=tensorboard", f"output_dir={tmp_path}"])
    other = SimpleNamespace(cfg=cfg, run_dir=tmp_path, accelerator=SimpleNamespace(
        is_main_process=False))  # fmt: skip
    assert start_tracker(other, resume=False).backends == {}
    main_rank = SimpleNamespace(cfg=cfg, run_dir=tmp_path, accelerator=SimpleNamespace(
        is_main_process=True))  # fmt: skip
    tracker = start_tracker(main_rank, resume=False)
    assert list(tracker.backends) == ["tensorboard"]
    tracker.close()
    assert (tmp_path / "tensorboard").is_dir()


def test_a_tracker_failing_mid_run_is_logged_once_and_dropped(tmp_path, caplog, monkeypatch):
    """A real MLflow failure (its run deleted under it): one warning, then the tracker is gone
    while the others go on."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    info = RunInfo(tmp_path, "proj", "run", config={"a": 1})
    tracker = open_tracker(info, ["mlflow", "tensorboard"])
    mlflow = tracker.backends["mlflow"]
    tracker.log({"reward/mean": 0.5}, step=1)
    mlflow.client.delete_run(mlflow.run_id)
    with caplog.at_level(logging.WARNING, logger="ngrpo.tracking"):
        for step in (2, 3, 4):
            tracker.log({"reward/mean": 0.5}, step=step)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "tracker mlflow failed in log at step 2" in warnings[0].message
    assert list(tracker.backends) == ["tensorboard"] and "mlflow" in tracker.failed
    tracker.close()


def test_library_loads_and_saves_draw_no_transformers_progress_bar(tmp_path):
    code = (
        "from ngrpo.models.load import load_model, load_tokenizer\n"
        "from ngrpo.trainer.checkpoints import _save_model\n"
        f"m = load_model('base')\n_save_model(__import__('pathlib').Path({str(tmp_path)!r}), m, "
        "load_tokenizer('base'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Loading weights" not in done.stderr and "Writing model shards" not in done.stderr
    assert (tmp_path / "model.safetensors").is_file()


def test_tracker_with_no_backend_reports_nothing():
    tracker = Tracker.disabled()
    tracker.log({"a": 1.0}, step=1)
    tracker.log_table("t", [{"a": 1}], step=1)
    tracker.close({"a": 1.0})
    assert tracker.backends == {} and tracker.failed == {}


def test_completion_rows_from_a_hand_made_batch(embedded_tokenizer):
    """One response `7 + 5 <eos>` whose `+` input was mixed (anchor `+`, neighbour `-` at 0.25,
    noise of norm 5), and one plain response: every field read back from the batch."""
    import torch

    from ngrpo.method.soft_inputs import SoftInputs
    from ngrpo.rollout.batch import RolloutBatch
    from ngrpo.tracking.completions import completion_rows, table_rows

    tok = embedded_tokenizer
    ids = {w: tok.convert_tokens_to_ids(w) for w in ("7", "+", "-", "5", "Mia", "has")}
    eos, pad = tok.eos_token_id, tok.pad_token_id
    prompt = torch.tensor([[ids["Mia"], ids["has"]]] * 2)  # (2, 2)
    response = torch.tensor([[ids["7"], ids["+"], ids["5"], eos], [ids["5"], eos, pad, pad]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    soft = SoftInputs.from_token_ids(torch.cat([prompt, response], 1), k=2)  # (2, 6, 2)
    soft.ids[0, 3] = torch.tensor([ids["+"], ids["-"]])
    soft.weights[0, 3] = torch.tensor([0.75, 0.25])
    soft.noise = torch.zeros(2, 6, 4)
    soft.noise[0, 3] = torch.tensor([3.0, 4.0, 0.0, 0.0])  # norm 5
    mixed = torch.zeros(2, 4, dtype=torch.bool)
    mixed[0, 1] = True
    batch = RolloutBatch(
        prompt_ids=prompt, prompt_mask=torch.ones(2, 2, dtype=torch.long), response_ids=response,
        response_mask=mask, logprobs=torch.zeros(2, 4), soft_inputs=soft, mixed=mixed, stats={},
        prompt_index=torch.tensor([0, 0]), truncated=torch.tensor([False, False]),
    )  # fmt: skip
    texts = [tok.decode(r, skip_special_tokens=True) for r in batch.responses()]
    rows = completion_rows(batch, texts, [1.0, 0.0], [0.7, -0.7], tok, step=5,
                           reward_values={"math": [1.0, None]}, group_size=2)  # fmt: skip
    first, second = rows
    assert (first["group"], first["sample"], second["sample"]) == (0, 0, 1)
    assert first["prompt"] == "Mia has" and first["response"] == "7 + 5"
    assert first["tokens"] == ["7", "+", "5", tok.eos_token] and first["sep"] == " "
    assert first["length"] == 4 and second["length"] == 2 and second["rewards"] == {"math": None}
    assert first["mixed"] == [{
        "position": 1, "token": "+", "anchor": "+", "anchor_weight": 0.75,
        "neighbors": [{"token": "-", "weight": 0.25}], "noise_norm": 5.0, "next": "5",
    }]  # fmt: skip
    assert second["mixed"] == [] and first["advantage"] == 0.7 and first["truncated"] is False
    flat = table_rows(rows)
    assert flat[0]["mixed_count"] == 1 and flat[0]["reward/math"] == 1.0
    assert json.loads(flat[0]["mixing"]) == first["mixed"] and "tokens" not in flat[0]


def test_no_completion_files_when_completions_every_is_0(tmp_path):
    overrides = [
        *tracked_overrides(tmp_path / "run", 1, "logging.completions_every=0", "eval.at_start=true",
                           "eval.every=1"),
        "logging.report_to=[]",
    ]  # fmt: skip
    assert main(["train", "--config", "tiny_ngrpo", *overrides]) == 0
    kinds = [json.loads(line)["type"] for line in (tmp_path / "run/metrics.jsonl").open()]
    assert kinds.count("eval") == 2 and "train" in kinds  # evaluated at start and after step 1
    assert not (tmp_path / "run/completions").exists()
