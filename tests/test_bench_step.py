"""`ngrpo bench train` and `ngrpo bench mismatch` at toy size on CPU: the documented JSON, phases
that add up to the step, the layer probe's alignment. Timings are reported, never asserted."""

import json

import pytest

from ngrpo.cli import main


def test_bench_train_tiny_writes_phases_that_sum_to_the_step(tmp_path):
    out = tmp_path / "train.json"
    argv = ["bench", "train", "--preset", "tiny", "--prompts", "2", "--group", "2",
            "--prompt-tokens", "8", "--new-tokens", "6", "--micro-batch", "2", "--steps", "2",
            "--profile", "--workdir", str(tmp_path / "work"), "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["preset"] == "tiny" and report["device"] == "cpu" and report["dtype"] == "float32"
    assert len(report["warmup_steps"]) == 1 and len(report["steps"]) == 1
    step = report["steps"][0]
    phases = step["phases"]
    assert set(phases) == {"generate", "rewards", "reference", "old_logprobs",
                           "forward_backward", "optimizer", "rollout_copy", "other"}  # fmt: skip
    assert sum(phases.values()) == pytest.approx(step["step_s"])  # `other` closes the sum
    assert phases["generate"] > 0 and phases["forward_backward"] > 0
    assert phases["old_logprobs"] == 0.0  # fp32: π_old is the rollout's (train.old_logprobs auto)
    assert step["response_tokens_mean"] == 6.0  # lengths forced: random weights never stop
    # 4 rows of prompt (chat template around 8 words) + 6 response tokens
    assert step["learner_tokens"] > 4 * (8 + 6)
    assert report["median"]["learner_tokens_per_s"] > 0
    assert report["memory"]["plan_peak_bytes"] > 0 and report["memory"]["peak_bytes"] > 0
    assert report["learner_bf16_peak_fraction"] is None  # CUDA only
    assert report["profile_top_ops"] and {"op", "calls", "self_ms"} <= set(
        report["profile_top_ops"][0]
    )


def test_bench_mismatch_tiny_reports_the_gap_and_where_it_starts(tmp_path):
    out = tmp_path / "mismatch.json"
    argv = ["bench", "mismatch", "--preset", "tiny", "--prompts", "2", "--n", "2",
            "--prompt-tokens", "6", "--new-tokens", "8", "--micro-batch", "2",
            "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["dtype"] == "bfloat16" and set(report["precisions"]) == {"learner", "compute"}
    for precision, entry in report["precisions"].items():
        for strategy in ("none", "neighbor"):
            result = entry[strategy]
            assert result["tokens"] == 2 * 2 * 8
            gap, other = result["mismatch"], report["precisions"]["compute"][strategy]["mismatch"]
            if precision == "compute":  # the bf16 residual stream moves the log-probs
                assert gap["mismatch/logp_abs_max"] > 0
            else:  # the fp32 residual stream and head remove (most of) that gap
                assert gap["mismatch/logp_abs_max"] < other["mismatch/logp_abs_max"]
            if strategy == "none":  # nothing mixed, nothing measured after a mix
                assert result["mixed_tokens"] == result["after_mixed_tokens"] == 0
                assert gap["mismatch/mixed/logp_abs_max"] == 0.0
            else:  # the tokens after a mix: one fewer per row whose last input was mixed
                assert 0 < result["after_mixed_tokens"] <= result["mixed_tokens"]
            layers = result["layers"]
            assert [x["point"] for x in layers] == ["layer_0", "layer_1", "final_norm"]  # 2 layers
            if precision == "learner":  # layer 0 reads the same fp32 embedding on both paths
                assert layers[0]["rel_max"] == 0.0
            else:  # the decode path rounds its residual stream to bf16 from the start
                assert layers[0]["rel_max"] > 0.0
    cost = report["old_logprobs_cost"]
    assert cost["recompute_s"] > 0 and cost["update_s"] > 0


def test_bench_step_bad_arguments(capsys):
    assert main(["bench", "train", "--preset", "huge"]) == 2
    assert "unknown preset 'huge'" in capsys.readouterr().err
    assert main(["bench", "train", "--steps", "0"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err
    assert main(["bench", "mismatch", "--strategies", "none,fast"]) == 2
    assert "--strategies: unknown ['fast']" in capsys.readouterr().err
    assert main(["bench", "mismatch", "--dtype", "float32"]) == 2
    assert "--dtype must be one of bfloat16, float16" in capsys.readouterr().err


def test_bench_threads_end_with_the_command(tmp_path):
    """`--threads` sets torch's CPU thread count for the bench only: a library caller of `main`
    gets its own count back (before: the bench's stayed set for the rest of the process)."""
    import torch

    before = torch.get_num_threads()
    mine = 1 if before > 1 else 2  # a count the bench's --threads is not
    torch.set_num_threads(mine)
    try:
        argv = ["bench", "mismatch", "--preset", "tiny", "--prompts", "1", "--n", "1",
                "--prompt-tokens", "4", "--new-tokens", "2", "--micro-batch", "1",
                "--strategies", "none", "--threads", str(mine + 1),
                "--json", str(tmp_path / "m.json")]  # fmt: skip
        assert main(argv) == 0
        assert torch.get_num_threads() == mine
    finally:
        torch.set_num_threads(before)
