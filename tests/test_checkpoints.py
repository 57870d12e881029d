"""Checkpoints any tool can load; damaged files and unsafe resume state give one `error:` line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from factories import tiny_qwen2

from ngrpo.cli import main
from ngrpo.config import load_config, save_config
from ngrpo.models.load import load_model, load_tokenizer
from ngrpo.models.tokenizer import PINNED_TOKENIZER_MODULE
from ngrpo.trainer import STATE_FILE
from ngrpo.trainer.checkpoints import _save_model

TEXTS = [
    "Mia has 7 shells . Mia finds 5 more . How many shells does Mia have now ?",
    "<think> 7 + 5 = 12 . 12 * 2 = 24 . </think> The answer is \\boxed{ 24 } .",
    "Zoe has 99 cookies and a word the vocabulary lacks 100 .",
]


@pytest.fixture(scope="module")
def checkpoint(embedded_tokenizer, tmp_path_factory) -> Path:
    """A model directory written the way the trainer writes checkpoints and best/."""
    directory = tmp_path_factory.mktemp("ckpt") / "step-000001"
    directory.mkdir()
    _save_model(directory, tiny_qwen2(embedded_tokenizer), embedded_tokenizer)
    return directory


def test_plain_auto_classes_load_a_checkpoint_with_ngrpos_token_ids(checkpoint):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ours = load_tokenizer(checkpoint)
    for plain in (
        AutoTokenizer.from_pretrained(str(checkpoint)),
        AutoTokenizer.from_pretrained(str(checkpoint), trust_remote_code=True),
    ):
        for text in TEXTS:
            ids = ours(text, add_special_tokens=False)["input_ids"]
            assert plain(text, add_special_tokens=False)["input_ids"] == ids
            assert plain.decode(ids) == ours.decode(ids)
        chat = [{"role": "user", "content": TEXTS[0]}]
        assert plain.apply_chat_template(chat, add_generation_prompt=True) == (
            ours.apply_chat_template(chat, add_generation_prompt=True)
        )
        assert plain.eos_token_id == ours.eos_token_id
    config = json.loads((checkpoint / "tokenizer_config.json").read_text())
    assert config["auto_map"]["AutoTokenizer"][1].startswith(PINNED_TOKENIZER_MODULE)
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint))
    reference = load_model(checkpoint)
    ids = torch.tensor([ours(TEXTS[1])["input_ids"]])
    assert torch.equal(model(ids).logits, reference(ids).logits)


def test_without_the_pin_plain_autotokenizer_would_split_words(checkpoint, tmp_path):
    """The failure the pin prevents (transformers 5 rebuilds Qwen2Tokenizer for qwen2)."""
    from transformers import AutoTokenizer

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (bare / name).write_bytes((checkpoint / name).read_bytes())
    config = json.loads((checkpoint / "tokenizer_config.json").read_text())
    del config["auto_map"]
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    ours = load_tokenizer(checkpoint)
    plain = AutoTokenizer.from_pretrained(str(bare))
    assert plain(TEXTS[0])["input_ids"] != ours(TEXTS[0])["input_ids"]


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for path in src.iterdir():
        (dst / path.name).write_bytes(path.read_bytes())
    return dst


def _one_error_line(capsys, message: str) -> None:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and message in lines[-1], err
    assert sum(line.startswith("error:") for line in lines) == 1


@pytest.mark.parametrize(
    ("name", "damage", "message"),
    [
        ("model.safetensors", "truncate", "model.safetensors is corrupted or truncated"),
        ("model.safetensors", "garble", "model.safetensors is corrupted or truncated"),
        ("config.json", "truncate", "config.json is corrupted or truncated"),
        ("tokenizer.json", "truncate", "tokenizer.json is corrupted or truncated"),
        ("tokenizer_config.json", "garble", "tokenizer_config.json is corrupted or truncated"),
    ],
)
def test_damaged_files_give_an_error_line_naming_the_file(
    name, damage, message, checkpoint, tmp_path, capsys
):
    broken = _copy(checkpoint, tmp_path / "broken")
    data = (broken / name).read_bytes()
    (broken / name).write_bytes(data[: len(data) // 2] if damage == "truncate" else b"x" + data[1:])
    assert main(["neighbors", "--model", str(broken), "--token", "7", "--k", "3"]) == 2
    _one_error_line(capsys, f"{broken}/{message}")


class _Payload:
    """Unpickling this runs `os.system` (what a crafted trainer_state.pt would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_resume_refuses_a_pickle_payload_in_the_trainer_state(checkpoint, tmp_path, capsys):
    run = tmp_path / "run"
    step = run / "checkpoints" / "step-000001"
    step.parent.mkdir(parents=True)
    _copy(checkpoint, step)
    marker = tmp_path / "pwned"
    torch.save({"step": 1, "rng": _Payload(marker)}, step / STATE_FILE)
    cfg = load_config("tiny_grpo", [f"model.path={checkpoint}", f"output_dir={run}",
                                    "eval.every=0", "eval.at_start=false"])  # fmt: skip
    save_config(cfg, run / "config.yaml")
    assert main(["train", "--resume", str(run)]) == 2
    _one_error_line(capsys, f"{step / STATE_FILE} cannot be loaded safely (UnpicklingError")
    assert not marker.exists()
    # a damaged state file is an error line too
    (step / STATE_FILE).write_bytes(b"PK\x03\x04 not a zip")
    assert main(["train", "--resume", str(run)]) == 2
    _one_error_line(capsys, f"{step / STATE_FILE} cannot be loaded safely")
