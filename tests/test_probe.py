"""The semantic-consistency probe: matched-shift strategies against naive loops, the rollout's
measured shift, the per-run summary, `run_probe` on a tiny random Qwen2, and `ngrpo probe`."""

import json
import math

import pytest
import torch
from factories import tiny_lm

from ngrpo.cli import main
from ngrpo.method.exploration import STRATEGIES, StepView
from ngrpo.models.tokenizer import build_tokenizer
from ngrpo.rollout import SamplingParams, generate
from ngrpo.study.probe import (
    aggregate_probe,
    mean_ci,
    ngrpo_config,
    perturbation_config,
    run_probe,
    summarize_run,
)
from ngrpo.tasks import generate as task_problems
from ngrpo.utils.errors import NgrpoError

V, D, B = 40, 16, 32


def _view(seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, V, generator=gen)
    probs = logits.softmax(-1)
    return StepView(
        logits=logits, probs=probs, sampled=torch.multinomial(probs, 1, generator=gen)[:, 0],
        table=torch.randn(V, D, generator=gen), neighbors=None,
        generator=torch.Generator().manual_seed(seed + 1),
    )  # fmt: skip


def _naive_nearest(table, a):
    best, best_sim = None, -math.inf
    for v in range(table.shape[0]):
        if v == a:
            continue
        sim = float(table[a] @ table[v] / (table[a].norm() * table[v].norm()))
        if sim > best_sim:
            best, best_sim = v, sim
    return best


@pytest.mark.numerics
@pytest.mark.parametrize("shift", [0.05, 0.3, 2.0])
def test_shift_gaussian_has_the_exact_relative_norm(shift):
    view = _view()
    mix = STRATEGIES["shift_gaussian"](view, k=2, anchor="sampled", noise_scale=shift)
    assert torch.equal(mix.ids[:, 0], view.sampled)
    assert mix.weights[:, 0].eq(1).all() and mix.weights[:, 1].eq(0).all()
    rows = view.table[view.sampled]
    torch.testing.assert_close(mix.noise.norm(dim=-1), shift * rows.norm(dim=-1))
    other = STRATEGIES["shift_gaussian"](_view(), k=2, anchor="sampled", noise_scale=shift)
    torch.testing.assert_close(mix.noise, other.noise)  # seeded by the exploration generator
    assert (mix.noise.sum(0) / mix.noise.norm(dim=-1).sum()).abs().max() < 0.2  # no preferred axis


@pytest.mark.numerics
@pytest.mark.parametrize("shift", [0.05, 0.3, 5.0])
def test_shift_neighbor_weight_and_neighbour_match_a_naive_loop(shift):
    view = _view(3)
    mix = STRATEGIES["shift_neighbor"](view, k=3, anchor="greedy", noise_scale=shift)
    assert mix.noise is None
    table = view.table
    for row in range(B):
        a = int(view.probs[row].argmax())
        n = _naive_nearest(table, a)
        w = min(0.5, shift * float(table[a].norm()) / float((table[n] - table[a]).norm()))
        assert mix.ids[row].tolist() == [a, n, a]
        assert mix.weights[row].tolist() == pytest.approx([1 - w, w, 0.0], abs=1e-6)
        mixed = (1 - w) * table[a] + w * table[n]
        achieved = float((mixed - table[a]).norm() / table[a].norm())
        assert achieved == pytest.approx(min(shift, 0.5 * float((table[n] - table[a]).norm())
                                             / float(table[a].norm())), rel=1e-5)  # fmt: skip
    if shift == 5.0:
        assert torch.allclose(mix.weights[:, 1], torch.full((B,), 0.5))  # the cap binds
    plain = STRATEGIES["shift_neighbor"](view, k=1, anchor="sampled", noise_scale=shift)
    assert torch.equal(plain.ids[:, 0], view.sampled) and plain.weights.eq(1).all()


def _tiny_model(vocab: int, seed: int = 0):
    return tiny_lm(vocab, seed=seed, init_range=0.02)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return _tiny_model(len(tokenizer))


def test_rollout_measures_the_target_shift_before_the_marker(model):
    prompts = [[10, 11, 12], [13, 14]]
    marker = [5]
    for kind in ("gaussian", "neighbor"):
        batch = generate(
            model, prompts, SamplingParams(n=3, max_new_tokens=12), eos_token_id=[], pad_token_id=0,
            exploration=perturbation_config(kind, 0.2), answer_start_ids=marker, training=True,
        )  # fmt: skip
        assert batch.stats["rollout/mixed_frac"] == 1.0  # every eligible position at mix rate 1
        assert torch.equal(batch.mixed, batch.eligible)
        if kind == "gaussian":
            assert batch.stats["rollout/embed_shift"] == pytest.approx(0.2, rel=1e-4)
        else:
            assert 0 < batch.stats["rollout/embed_shift"] <= 0.2 + 1e-6


def test_summarize_run_and_mean_ci():
    texts = [
        "<think> 1 + 1 = 2 . </think> \\boxed{ 2 }", "<think> 1 + 1 = 3 . </think> \\boxed{ 3 }",
        "<think> 2 + 2 = 4 . </think> \\boxed{ 4 }", "<think> 2 + 2 = 4 . </think> no answer",
    ]  # fmt: skip
    answers, correct = ["2", "3", "4", None], [True, False, True, False]
    row = summarize_run(texts, answers, correct, n=2, reference_answers=["2", "2", "4", None])
    assert row["accuracy"] == 0.5 and row["accuracy_ci"] == [0.5, 0.5]  # both problems 1/2
    assert row["answer_agreement"] == 0.75  # sample 1 changed its answer; None == None agrees
    assert row["unparsed"] == 0.25 and row["distinct_answers"] == 1.5
    assert summarize_run(texts, answers, correct, n=2)["answer_agreement"] == 1.0
    with pytest.raises(ValueError):
        summarize_run(texts, answers, correct, n=3)
    with pytest.raises(ValueError):
        summarize_run(texts, answers, correct, n=2, reference_answers=["2"])
    mean, low, high = mean_ci([0.0, 1.0, 0.5, 0.5])
    half = 1.96 * math.sqrt((0.25 + 0.25 + 0 + 0) / 3 / 4)
    assert (mean, low, high) == pytest.approx((0.5, 0.5 - half, 0.5 + half))
    assert mean_ci([0.3]) == (0.3, 0.3, 0.3)


def test_run_probe_rows_reproducible_and_progress(model, tokenizer):
    problems = task_problems("arith-id", 3, seed=0)
    calls = []
    kwargs = dict(shifts=(0.1, 0.4), n=2, max_new_tokens=8, seed=1)
    result = run_probe(model, tokenizer, problems, progress=lambda *a: calls.append(a), **kwargs)
    rows = result["rows"]
    release, paper = rows[5], rows[7]
    assert [(r["perturbation"], r["target_shift"], r["matched_to"]) for r in rows] == [
        ("none", 0.0, None), ("gaussian", 0.1, None), ("gaussian", 0.4, None),
        ("neighbor", 0.1, None), ("neighbor", 0.4, None),
        ("n-grpo (release)", None, None),
        ("gaussian", release["achieved_shift"], "n-grpo (release)"),
        ("n-grpo (paper text)", None, None),
        ("gaussian", paper["achieved_shift"], "n-grpo (paper text)"),
    ]  # fmt: skip
    assert rows[0]["achieved_shift"] == 0.0 and rows[0]["answer_agreement"] == 1.0
    for row in [*rows[1:3], rows[6], rows[8]]:  # gaussian: the exact shift, matched ones too
        assert row["achieved_shift"] == pytest.approx(row["target_shift"], rel=1e-4, abs=1e-7)
    for row in rows[3:5]:
        assert 0 < row["achieved_shift"] <= row["target_shift"] + 1e-6
    assert release["mixed_frac"] == paper["mixed_frac"] == 1.0
    # the released weights give the neighbour more weight than the renormalised policy does
    assert 0.5 >= release["neighbor_weight"] > paper["neighbor_weight"] > 0
    assert rows[0]["neighbor_weight"] is None and rows[3]["neighbor_weight"] is None
    assert calls[-1] == ("probe runs", 9, 9)
    assert result["config"]["num_problems"] == 3 and result["config"]["shifts"] == [0.1, 0.4]
    assert result["config"]["weightings"] == ["release", "policy"]
    json.dumps(result)  # JSON-ready
    again = run_probe(model, tokenizer, problems, ngrpo_reference=False, **kwargs)
    assert again["rows"] == rows[:5]  # seeded: the same rows again
    one = run_probe(model, tokenizer, problems, weightings=("policy",), matched_gaussian=False,
                    **kwargs)  # fmt: skip
    assert one["rows"][5:] == [paper]


def test_ngrpo_reference_configs_name_their_weighting():
    assert ngrpo_config().neighbor_weights == "release"
    assert ngrpo_config(weights="policy").neighbor_weights == "policy"
    assert ngrpo_config().strategy == "neighbor" and ngrpo_config().mix_top_k == 2


def _probe_result(seed, accuracy, matched_shift):
    def row(kind, target, achieved, acc, matched_to=None):
        return {
            "perturbation": kind, "target_shift": target, "matched_to": matched_to,
            "achieved_shift": achieved, "mixed_frac": 1.0, "accuracy": acc,
            "accuracy_ci": [acc - 0.1, acc + 0.1], "answer_agreement": 1.0 - achieved,
            "distinct_answers": 2, "response_len": 20.0,
            "neighbor_weight": 0.3 if kind.startswith("n-grpo") else None,
        }  # fmt: skip

    rows = [
        row("none", 0.0, 0.0, accuracy),
        row("gaussian", 0.2, 0.2, accuracy - 0.1),
        row("n-grpo (release)", None, matched_shift, accuracy - 0.05),
        row("gaussian", matched_shift, matched_shift, accuracy - 0.2, "n-grpo (release)"),
    ]
    return {"config": {"seed": seed, "n": 4}, "rows": rows, "seconds": 10.0}


def test_aggregate_probe_over_seeds_by_hand():
    results = [_probe_result(0, 0.4, 0.10), _probe_result(1, 0.5, 0.20),
               _probe_result(2, 0.6, 0.30)]  # fmt: skip
    combined = aggregate_probe(results)
    assert combined["config"]["seeds"] == [0, 1, 2] and combined["seconds"] == 30.0
    assert combined["per_seed"] == results
    half = 4.303 * 0.1 / math.sqrt(3)  # values x, x + 0.1, x + 0.2: sd 0.1, t(0.975, 2)
    base, gaussian, reference, matched = combined["rows"]
    assert base["accuracy"] == pytest.approx(0.5) and base["seeds"] == 3
    assert base["accuracy_ci"] == pytest.approx([0.5 - half, 0.5 + half])  # over seeds now
    assert base["target_shift"] == 0.0 and base["achieved_shift_ci"] == [0.0, 0.0]
    assert gaussian["accuracy"] == pytest.approx(0.4) and gaussian["target_shift"] == 0.2
    assert reference["target_shift"] is None
    assert reference["achieved_shift_ci"] == pytest.approx([0.2 - half, 0.2 + half])
    assert matched["matched_to"] == "n-grpo (release)"
    assert matched["target_shift"] == pytest.approx(0.2)  # the mean matched shift
    assert matched["answer_agreement"] == pytest.approx(0.8)
    assert matched["distinct_answers"] == 2 and matched["distinct_answers_ci"] == [2.0, 2.0]
    assert "mixed_frac_ci" in matched and "perturbation_ci" not in matched
    assert matched["neighbor_weight"] is None and "neighbor_weight_ci" not in matched
    assert reference["neighbor_weight"] == pytest.approx(0.3)
    single = aggregate_probe(results[:1])
    assert single["rows"][0]["accuracy_ci"] == pytest.approx([0.3, 0.5])  # one seed: over problems
    assert single["config"]["seeds"] == [0] and single["rows"][0]["seeds"] == 1
    with pytest.raises(ValueError, match="distinct seeds"):
        aggregate_probe([results[0], results[0]])
    other = _probe_result(3, 0.5, 0.1)
    other["rows"] = other["rows"][:3]
    with pytest.raises(ValueError, match="same rows"):
        aggregate_probe([results[0], other])
    with pytest.raises(ValueError):
        aggregate_probe([])


def test_probe_plot_over_seeds(tmp_path):
    from ngrpo.study.plots import plot_probe

    combined = aggregate_probe([_probe_result(0, 0.4, 0.1), _probe_result(1, 0.5, 0.2)])
    for row in combined["rows"]:
        row["pairwise_edit"] = 0.1  # the fourth panel's column
    path = plot_probe(combined, tmp_path / "probe.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shifts": ()}, "shifts"),
        ({"shifts": (-0.1,)}, "shifts"),
        ({"kinds": ("uniform",)}, "gaussian, neighbor"),
        ({"n": 0}, "samples per problem"),
        ({"mix_rate": 0.0}, "mix_rate"),
        ({"grader": "fuzzy"}, "unknown grader 'fuzzy'"),
        ({"weightings": ("paper",)}, "unknown N-GRPO weighting 'paper'"),
    ],
)
def test_run_probe_errors(model, tokenizer, kwargs, message):
    with pytest.raises(NgrpoError, match=message):
        run_probe(model, tokenizer, task_problems("arith-id", 1), **kwargs)
    with pytest.raises(NgrpoError, match="at least one problem"):
        run_probe(model, tokenizer, [])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model, tokenizer):
    path = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def test_cli_probe_writes_json_png_and_table(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal: rich does not wrap the table
    out = tmp_path / "probe"
    code = main([
        "probe", "--model", str(model_dir), "--problems", "2", "--n", "2", "--shifts", "0.1,0.3",
        "--max-new-tokens", "6", "--out", str(out),
    ])  # fmt: skip
    stdout = capsys.readouterr().out
    assert code == 0
    result = json.loads((out / "probe.json").read_text())
    assert len(result["rows"]) == 9 and result["config"]["model"] == str(model_dir)
    assert (out / "probe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "semantic-consistency probe" in stdout and "neighbor" in stdout
    argv = ["probe", "--model", str(model_dir), "--problems", "1", "--n", "2", "--shifts", "0.2"]
    assert main([*argv, "--max-new-tokens", "4", "--no-reference", "--out", str(out)]) == 0
    rows = json.loads((out / "probe.json").read_text())["rows"]
    assert [r["perturbation"] for r in rows] == ["none", "gaussian", "neighbor"]
    seeded = [*argv, "--max-new-tokens", "4", "--seeds", "3,5", "--weightings", "policy"]
    assert main([*seeded, "--out", str(out)]) == 0
    result = json.loads((out / "probe.json").read_text())
    assert result["config"]["seeds"] == [3, 5] and len(result["per_seed"]) == 2
    assert [r["perturbation"] for r in result["rows"]][-2:] == ["n-grpo (paper text)", "gaussian"]
    assert all(r["seeds"] == 2 and "accuracy_ci" in r for r in result["rows"])


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--shifts", "0.1,abc"], "--shifts must be comma-separated numbers"),
        (["--perturbations", "uniform"], "unknown probe perturbation 'uniform'"),
        (["--split", "arith-xx"], "unknown task split"),
        (["--n", "0"], "must be >= 1"),
        (["--weightings", "paper"], "unknown N-GRPO weighting 'paper'"),
        (["--seeds", "1,1"], "seed 1 is listed twice"),
    ],
)
def test_cli_probe_errors_in_one_line(model_dir, tmp_path, capsys, argv, fragment):
    code = main(["probe", "--model", str(model_dir), "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and fragment in err[0]


def test_probe_on_the_base_model_is_wired_end_to_end(base_model_dir):
    from ngrpo.models.load import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(base_model_dir)
    result = run_probe(
        model, tokenizer, task_problems("arith-id", 8), shifts=(0.2,), n=4, max_new_tokens=48,
        grader="exact",  # the embedded task's answers are plain integers: no math-verify pool
    )  # fmt: skip
    base, gaussian, neighbor, release, _, paper, _ = result["rows"]
    assert base["accuracy"] > 0.1 and base["unparsed"] < 0.2  # prompts, EOS and grading line up
    assert gaussian["achieved_shift"] == pytest.approx(0.2, rel=1e-4)
    assert 0 < neighbor["achieved_shift"] <= 0.2 + 1e-6
    assert release["perturbation"] == "n-grpo (release)" and release["mixed_frac"] == 1.0
    assert paper["perturbation"] == "n-grpo (paper text)"
    # the release's softmax over probabilities never gives the neighbour less than the paper text's
    # renormalised probabilities (exp(p_a - p_n) <= p_a / p_n for 0 < p_n <= p_a <= 1), and it
    # gives it a large share; how much the paper text gives depends on the build (0.18-0.21 seen)
    assert release["neighbor_weight"] > max(0.2, paper["neighbor_weight"])
