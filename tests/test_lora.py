"""LoRA (`model.lora`, ngrpo.models.lora): config and its errors, training only adapters on a frozen
base, the disabled-adapter reference, peft checkpoints + exact resume, loading adapters, export."""

from __future__ import annotations

import copy
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from numerics import fp32_storage_atol
from safetensors.torch import load_file
from test_trainer import _overrides as trainer_overrides
from test_trainer import _untimed

import ngrpo.models.load
import ngrpo.trainer.loop
from ngrpo.cli import main
from ngrpo.config import load_config, save_config
from ngrpo.learner.update import reference_logprobs
from ngrpo.method.neighbors import NeighborIndex
from ngrpo.models.load import load_model, set_activation_checkpointing
from ngrpo.models.lora import adapter_parameters, check_targets
from ngrpo.rollout import EngineOptions, SamplingParams, generate, replay_logits
from ngrpo.trainer import checkpoint_dirs, load_run_config, read_metrics, train
from ngrpo.utils.errors import NgrpoError

LORA = ("exploration.entropy_threshold=null", "model.lora.r=4", "model.lora.alpha=8",
        "train.beta=0.05", "train.learning_rate=1e-2")  # fmt: skip


def _overrides(base: Path, out: Path, steps: int, *extra: str) -> list[str]:
    """test_trainer's small run with adapters, a KL reference and a learning rate that moves
    them."""
    return trainer_overrides(base, out, steps, *LORA, *extra)


def _cfg(base: Path, out: Path, steps: int, *extra: str):
    return load_config("tiny_ngrpo", _overrides(base, out, steps, *extra))


@pytest.fixture(scope="module")
def lora_run(base_model_dir, tmp_path_factory):
    """Four LoRA steps in one go, with the in-memory run, the number of neighbour-cache
    invalidations and model loads it made."""
    mp = pytest.MonkeyPatch()
    captured, invalidations, loads = {}, [], []
    real_setup, real_invalidate = ngrpo.trainer.loop._setup, NeighborIndex.invalidate
    real_load = ngrpo.models.load.load_model

    def setup(*args, **kwargs):
        captured["run"] = real_setup(*args, **kwargs)
        return captured["run"]

    def invalidate(self):
        invalidations.append(1)
        real_invalidate(self)

    def load_model(*args, **kwargs):
        loads.append(args[0])
        return real_load(*args, **kwargs)

    mp.setattr(ngrpo.trainer.loop, "_setup", setup)
    mp.setattr(NeighborIndex, "invalidate", invalidate)
    mp.setattr(ngrpo.models.load, "load_model", load_model)
    try:
        out = train(_cfg(base_model_dir, tmp_path_factory.mktemp("lora_straight"), 4))
    finally:
        mp.undo()
    return out, captured["run"], len(invalidations), loads


# ----------------------------------------------------------------------------------- config


def test_lora_config_from_yaml_and_overrides_round_trips(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  lora:\n    r: 16\n    target_modules: [q_proj, v_proj]\n")
    cfg = load_config(path, ["model.lora.alpha=64"])
    assert (cfg.model.lora.r, cfg.model.lora.alpha) == (16, 64.0)
    assert cfg.model.lora.target_modules == ["q_proj", "v_proj"] and cfg.model.lora.enabled
    assert load_config(save_config(cfg, tmp_path / "saved.yaml")) == cfg
    default = load_config(None)
    assert default.model.lora.r == 0 and not default.model.lora.enabled
    assert default.model.lora.target_modules == [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.lora.dropout=0.1", "model.lora.dropout must be 0"),
        ("model.lora.target_modules=q_proj,embed_tokens", "embed_tokens would train the input"),
        ("model.lora.target_modules=lm_head", "lm_head would train the input embedding or the"),
        ("model.lora.r=-1", "model.lora.r must be an integer >= 0"),
        ("model.lora.alpha=0", "model.lora.alpha must be > 0"),
        ("model.lora.rank=4", "unknown config key 'model.lora.rank'"),
        ("model.lora=4", "model.lora is a section"),
        ("model.lora.r=abc", "model.lora.r must be an integer"),
    ],
)
def test_lora_config_errors_name_the_key(override, message):
    with pytest.raises(NgrpoError, match=message):
        load_config(None, ["model.lora.r=8", override])


def test_lora_dropout_error_says_why():
    with pytest.raises(NgrpoError, match="replay"):
        load_config(None, ["model.lora.r=8", "model.lora.dropout=0.05"])


def test_targets_are_checked_against_the_model(base_model_dir, tmp_path):
    model = ngrpo.models.load.load_model(base_model_dir)
    check_targets(model, ["q_proj", "mlp.down_proj"])  # names and dotted suffixes both match
    with pytest.raises(NgrpoError, match=r"qkv_proj, w1 match no module of Qwen2ForCausalLM"):
        check_targets(model, ["q_proj", "qkv_proj", "w1"])
    with pytest.raises(NgrpoError, match="lm_head would train"):
        check_targets(model, ["lm_head"])  # caught on the model too (config-time bypassed)
    with pytest.raises(NgrpoError, match="match no module"):  # end to end, before any step
        train(_cfg(base_model_dir, tmp_path / "run", 1, "model.lora.target_modules=w1"))


# --------------------------------------------------------------------------------- training


def test_only_adapters_train_and_the_neighbour_cache_is_never_invalidated(lora_run, base_model_dir):
    _, run, invalidations, _ = lora_run
    base = load_file(str(base_model_dir / "model.safetensors"))
    policy = run.policy
    # the frozen tables are bit-identical to the base model's after four steps
    assert torch.equal(policy.get_input_embeddings().weight, base["model.embed_tokens.weight"])
    head = base.get("lm_head.weight", base["model.embed_tokens.weight"])
    assert torch.equal(policy.get_output_embeddings().weight, head)
    # every non-adapter weight is unchanged (peft names the base layer `base_layer`)
    for name, param in run.peft_model.get_base_model().named_parameters():
        if "lora_" not in name:
            assert not param.requires_grad
            assert torch.equal(param, base[name.replace(".base_layer", "")]), name
    adapters = adapter_parameters(run.peft_model)
    assert adapters and all("lora_" in n for n in adapters)
    # lora_B starts at zero: non-zero now means the adapters trained
    assert all(p.abs().sum() > 0 for n, p in adapters.items() if "lora_B" in n)
    optimized = {id(p) for group in run.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in adapters.values()}
    # the index was built (cache filled) and only its constructor ever reset it
    assert run.neighbor_index is not None and run.neighbor_index.fills > 0
    assert invalidations == 1
    assert not run.neighbor_index.table().requires_grad


@pytest.mark.numerics
def test_beta_uses_the_policy_with_adapters_disabled_as_reference(lora_run, base_model_dir):
    run_dir, run, _, loads = lora_run
    assert run.ref_model is run.policy and run.ref_context is not None
    assert len(loads) == 1  # the base only: no second model for the reference
    rows = read_metrics(run_dir)
    assert rows[-1]["loss/kl"] > 0  # later steps: the adapted policy moved away from the base
    batch = generate(
        run.policy, run.prompts[:2], SamplingParams(n=2, max_new_tokens=12),
        eos_token_id=run.tokenizer.eos_token_id, pad_token_id=run.tokenizer.pad_token_id, seed=3,
    )  # fmt: skip
    with run.ref_context():
        ref = reference_logprobs(run.ref_model, batch, 1.0, run.params)  # (N, T)
    base = reference_logprobs(ngrpo.models.load.load_model(base_model_dir), batch, 1.0, run.params)
    torch.testing.assert_close(ref, base, rtol=0, atol=1e-6)
    adapted = reference_logprobs(run.policy, batch, 1.0, run.params)  # adapters back on
    assert (adapted - base).abs().max() > 1e-3


@pytest.mark.numerics
def test_static_and_dynamic_decoders_sample_the_same_tokens_with_adapters(lora_run):
    # The same function in both decoders, checked in float64 (`numerics`: mixed inputs are built
    # from each decoder's own logits, so float32 rounding differences grow at every mixed step).
    _, run, _, _ = lora_run
    policy64 = copy.deepcopy(run.policy).double()
    batches = [
        generate(
            policy64,
            run.prompts[:3],
            SamplingParams(n=4, max_new_tokens=16),
            eos_token_id=run.tokenizer.eos_token_id,
            pad_token_id=run.tokenizer.pad_token_id,
            exploration=run.cfg.exploration,
            answer_start_ids=run.answer_start_ids,
            training=True,
            seed=11,
            engine=EngineOptions(kv_cache=kind),
        )  # fmt: skip
        for kind in ("static", "dynamic")
    ]
    assert torch.equal(batches[0].response_ids, batches[1].response_ids)
    assert torch.equal(batches[0].mixed, batches[1].mixed)
    assert bool(batches[0].mixed.any())
    with torch.no_grad():  # log-probabilities are stored in float32: the rounding of that storage
        max_logit = float(replay_logits(policy64, batches[0]).abs().max())
    atol = fp32_storage_atol(max_logit)
    torch.testing.assert_close(batches[0].logprobs, batches[1].logprobs, rtol=0, atol=atol)


# ------------------------------------------------------------------------------ checkpoints


def test_checkpoint_holds_the_adapter_in_peft_format(lora_run, base_model_dir):
    run_dir, _, _, _ = lora_run
    last = checkpoint_dirs(run_dir)[-1]
    names = {p.name for p in last.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "trainer_state.pt",
            "tokenizer.json"} <= names  # fmt: skip
    assert "model.safetensors" not in names
    config = json.loads((last / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]) == base_model_dir.resolve()
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["lora_dropout"] == 0.0


def test_two_steps_then_resume_two_equals_four_straight(lora_run, base_model_dir, tmp_path):
    straight, _, _, _ = lora_run
    out = tmp_path / "split"
    train(_cfg(base_model_dir, out, 2))
    other = tmp_path / "other_base"  # the same weights elsewhere: still not the recorded base
    shutil.copytree(base_model_dir, other)
    with pytest.raises(NgrpoError, match=r"was trained on the base .* resume with model.path="):
        train(load_run_config(out, ["train.steps=4", f"model.path={other}"]), resume=True)
    with pytest.raises(NgrpoError, match="holds a LoRA adapter but model.lora.r=0"):
        train(load_run_config(out, ["train.steps=4", "model.lora.r=0"]), resume=True)
    train(load_run_config(out, ["train.steps=4"]), resume=True)
    ref = load_file(str(straight / "checkpoints/step-000004/adapter_model.safetensors"))
    got = load_file(str(out / "checkpoints/step-000004/adapter_model.safetensors"))
    assert ref.keys() == got.keys() and ref
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    step1 = load_file(str(out / "checkpoints/step-000001/adapter_model.safetensors"))
    assert any(not torch.equal(step1[k], got[k]) for k in got)  # it kept learning
    assert _untimed(read_metrics(out)) == _untimed(read_metrics(straight))


@pytest.mark.numerics
def test_load_model_accepts_an_adapter_directory(lora_run, base_model_dir, tmp_path):
    run_dir, run, _, _ = lora_run
    last = checkpoint_dirs(run_dir)[-1]
    merged = ngrpo.models.load.load_model(last)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    ids = torch.tensor([run.prompts[0]])  # (1, P)
    with torch.no_grad():
        want = run.peft_model(input_ids=ids).logits  # the in-memory adapter model, step 4
        torch.testing.assert_close(merged(input_ids=ids).logits, want, rtol=1e-5, atol=1e-5)
    assert ngrpo.models.load.load_tokenizer(last).get_vocab() == run.tokenizer.get_vocab()
    # a moved base: the error names the missing directory and the field
    moved = tmp_path / "adapter"
    shutil.copytree(last, moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (moved / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(NgrpoError, match=r"gone. named in .* does not exist"):
        ngrpo.models.load.load_model(moved)


def test_best_checkpoint_is_an_adapter_too(base_model_dir, tmp_path):
    out = train(_cfg(
        base_model_dir, tmp_path / "run", 1, "eval.every=1", "eval.limit=3", "eval.n=2",
        "eval.max_new_tokens=8", "data.eval_sets=arith-id",
        "eval.best_metric=eval/arith-id/pass@1",
    ))  # fmt: skip
    names = {p.name for p in (out / "best").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "best.json"} <= names
    assert "model.safetensors" not in names
    assert main(["export", str(out), str(tmp_path / "exp"), "--checkpoint", "best"]) == 0
    assert (tmp_path / "exp" / "model.safetensors").is_file()


# ----------------------------------------------------------------------------------- export


@pytest.mark.numerics
def test_export_merges_the_adapter_into_a_plain_model(lora_run, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, run, _, _ = lora_run
    out = tmp_path / "exported"
    assert main(["export", str(run_dir), str(out)]) == 0
    assert "step-000004" in capsys.readouterr().out
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not names & {"adapter_config.json", "adapter_model.safetensors", "trainer_state.pt"}
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert type(model).__name__ == "Qwen2ForCausalLM"
    ids = torch.tensor([run.prompts[1]])  # (1, P)
    with torch.no_grad():
        want = run.peft_model(input_ids=ids).logits
        torch.testing.assert_close(model(input_ids=ids).logits, want, rtol=1e-5, atol=1e-5)
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer.get_vocab() == run.tokenizer.get_vocab()
    # an earlier checkpoint by name differs from the latest
    earlier = tmp_path / "step2"
    assert main(["export", str(run_dir), str(earlier), "--checkpoint", "step-2"]) == 0
    old = load_file(str(earlier / "model.safetensors"))
    new = load_file(str(out / "model.safetensors"))
    assert any(not torch.equal(old[k], new[k]) for k in new)


def test_export_of_a_full_weight_checkpoint_copies_it(base_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    step = run_dir / "checkpoints" / "step-000003"
    shutil.copytree(base_model_dir, step)
    torch.save({"step": 3}, step / "trainer_state.pt")
    out = tmp_path / "out"
    assert main(["export", str(run_dir), str(out), "--checkpoint", "latest"]) == 0
    assert (out / "model.safetensors").read_bytes() == (step / "model.safetensors").read_bytes()
    assert (out / "config.json").is_file() and not (out / "trainer_state.pt").exists()


def test_export_errors(lora_run, tmp_path, capsys):
    run_dir = lora_run[0]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    (tmp_path / "empty_run").mkdir()
    cases = [
        ([str(tmp_path / "missing"), str(tmp_path / "o1")], "does not exist"),
        ([str(tmp_path / "empty_run"), str(tmp_path / "o2")], "has no complete checkpoint"),
        ([str(run_dir), str(tmp_path / "full")], "exists and is not empty"),
        ([str(run_dir), str(tmp_path / "o3"), "--checkpoint", "step-9"], "no checkpoint step-9"),
        ([str(run_dir), str(tmp_path / "o4"), "--checkpoint", "best"], "has no best/"),
        ([str(run_dir), str(tmp_path / "o5"), "--checkpoint", "last"], "latest, best or step-N"),
    ]
    for args, message in cases:
        assert main(["export", *args]) == 2
        assert message in capsys.readouterr().err
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 6))


@pytest.mark.numerics
def test_adapters_get_the_same_gradient_with_gradient_checkpointing(lora_run, base_model_dir):
    """Checkpointed layers still pass the same gradients to the adapters although the inputs
    come from a frozen embedding table (a known pitfall of checkpointing with frozen inputs)."""
    from ngrpo.learner.update import sequence_logprobs
    from ngrpo.models.load import load_lora
    from ngrpo.models.lora import LoraConfig

    _, run, _, _ = lora_run
    batch = generate(
        run.policy, run.prompts[:2], SamplingParams(n=2, max_new_tokens=10),
        eos_token_id=run.tokenizer.eos_token_id, pad_token_id=run.tokenizer.pad_token_id, seed=5,
    )  # fmt: skip
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same adapter init (lora_A is random) both times
        peft_model, policy = load_lora(LoraConfig(r=4), base_model_dir, None, "cpu")
        if checkpointing:
            set_activation_checkpointing(policy, True)
        policy.train()
        logp, _ = sequence_logprobs(policy, batch, 1.0)
        logp.sum().backward()
        # lora_B starts at 0, so lora_A's gradient is 0 either way: compare lora_B's
        grads.append({n: p.grad.clone() for n, p in adapter_parameters(peft_model).items()
                      if "lora_B" in n})  # fmt: skip
    assert grads[0].keys() == grads[1].keys() and grads[0]
    assert all(grads[0][n].abs().sum() > 0 for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6)


def test_bf16_base_is_held_in_bf16_and_scored_through_the_chunked_head(base_model_dir, tmp_path):
    """model.dtype=bfloat16: the frozen base is held in bf16 (no fp32 master copy), the adapters
    stay fp32, and the learner keeps its chunked head (no fallback to full logits)."""
    import ngrpo.learner.scoring

    captured = {}
    real_setup = ngrpo.trainer.loop._setup

    def setup(*args, **kwargs):
        captured["run"] = real_setup(*args, **kwargs)
        return captured["run"]

    ngrpo.learner.scoring._FULL_LOGITS_CLASSES.clear()
    mp = pytest.MonkeyPatch()
    mp.setattr(ngrpo.trainer.loop, "_setup", setup)
    try:
        train(
            _cfg(base_model_dir, tmp_path / "bf16", 1, "model.dtype=bfloat16", "model.device=cpu")
        )
    finally:
        mp.undo()
    run = captured["run"]
    frozen = {p.dtype for p in run.policy.parameters() if not p.requires_grad}
    trainable = {p.dtype for p in run.policy.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trainable == {torch.float32}
    assert not ngrpo.learner.scoring._FULL_LOGITS_CLASSES
    row = read_metrics(tmp_path / "bf16")[-1]
    assert row["actor/grad_norm"] > 0 and row["actor/replay_logp_err"] < 0.2


def test_activation_checkpointing_under_the_name_transformers_has(base_model_dir):
    """transformers 5.24+ renamed `gradient_checkpointing_enable` to
    `activation_checkpointing_enable` and warns at the old name: the loader uses the new one where
    it exists (no warning) and the old one elsewhere; either way checkpointing is on, then off."""
    model = load_model(base_model_dir, "cpu", torch.float32)
    states = []
    for on in (True, False):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            set_activation_checkpointing(model, on)
        assert not [str(w.message) for w in caught], on
        with warnings.catch_warnings():  # the state's old name warns too (transformers 5.24+)
            warnings.simplefilter("ignore")
            states.append(model.is_gradient_checkpointing)
    assert states == [True, False]
