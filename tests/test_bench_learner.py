"""`ngrpo bench learner --preset/--vocab` at toy size: the JSON it writes, variant parsing, and
clear errors for bad options. (No timing is asserted: numbers are only checked to exist.)"""

from __future__ import annotations

import json

import pytest

from ngrpo.bench.learner import Variant, parse_variant
from ngrpo.cli import main
from ngrpo.utils.errors import NgrpoError


def test_variants_parse_and_reject_unknown_parts():
    assert parse_variant("full+mb1") == Variant("full+mb1", chunked=False, micro_batch_size=1)
    assert parse_variant("chunked+tok16896+ckpt+ce4096") == Variant(
        "chunked+tok16896+ckpt+ce4096", max_tokens=16_896, checkpointing=True, chunk_elements=4096
    )
    for bad, message in (("fast+mb1", "must start with full or chunked"),
                         ("chunked+mb0", "unknown part 'mb0'"),
                         ("chunked+tokx", "unknown part 'tokx'")):  # fmt: skip
        with pytest.raises(NgrpoError, match=message):
            parse_variant(bad)


def test_bench_learner_vocab_writes_the_memory_and_variant_keys(tmp_path, capsys):
    out = tmp_path / "learner.json"
    argv = ["bench", "learner", "--vocab", "300", "--length", "24", "--prompt-tokens", "8",
            "--rows", "2", "--repeats", "1", "--variants", "chunked+mb1,full+mb2,chunked+tok40",
            "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    memory = report["memory"]
    assert memory["logits_fp32_bytes"] == 24 * 300 * 4  # one fp32 (T, V) tensor
    assert memory["peak_extra_bytes"] >= 0 and memory["peak_bytes"] > 0
    assert memory["method"].startswith("VmHWM")
    assert set(report["variants"]) == {"chunked+mb1", "full+mb2", "chunked+tok40"}
    for row in report["variants"].values():
        assert row["tokens_per_s"] > 0 and row["seconds_per_update"] > 0
        assert row["peak_bytes"] >= row["peak_extra_bytes"] >= 0
    assert report["vocab"] == report["vocab_model"] == 300
    assert report["tokens_per_update"] == 2 * (8 + 24) and report["device"] == "cpu"
    assert report["bf16_matmul_peak_flops"] is None  # no FLOP peak on a CPU
    assert "chunked+tok40" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--vocab", "300", "--rows", "0"], "--rows must be >= 1"),
    (["--vocab", "300", "--variants", "chunked+zz"], "unknown part 'zz'"),
    (["--vocab", "300", "--chunk-elements", "0"], "--chunk-elements must be >= 1"),
    (["--vocab", "2"], "--vocab must be above --k"),
    (["--preset", "tiny", "--dtype", "fp8"], "--dtype must be one of"),
])  # fmt: skip
def test_bench_learner_scale_bad_options(argv, message, capsys):
    assert main(["bench", "learner", *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_variant_out_of_memory_is_recorded_and_the_rest_still_run(tmp_path, monkeypatch, capsys):
    import torch

    import ngrpo.bench.learner

    real = ngrpo.bench.learner._time_variant

    def full_runs_out(model, optimizer, batch, advantages, params, *rest):
        if params.full_logits:
            raise torch.OutOfMemoryError("simulated")
        return real(model, optimizer, batch, advantages, params, *rest)

    monkeypatch.setattr(ngrpo.bench.learner, "_time_variant", full_runs_out)
    out = tmp_path / "learner.json"
    argv = ["bench", "learner", "--vocab", "300", "--length", "8", "--prompt-tokens", "4",
            "--rows", "2", "--repeats", "1", "--variants", "full+mb1,chunked+mb1",
            "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["variants"]["full+mb1"] == {"error": "out of memory"}
    assert report["variants"]["chunked+mb1"]["tokens_per_s"] > 0
    assert report["memory"]["peak_bytes"] is None  # the first variant has no numbers
    assert "out of memory" in capsys.readouterr().out
