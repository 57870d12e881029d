"""Training config: shipped configs, overrides, aliases, coercion, validation errors, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ngrpo.config import (
    ALIASES,
    CONFIG_DIR,
    TrainConfig,
    config_keys,
    config_to_dict,
    derived_values,
    load_config,
    parse_override,
    resolve_config_path,
    resolve_device_dtype,
    save_config,
    shipped_configs,
    validate_config,
)
from ngrpo.utils.errors import NgrpoError

REPO_ROOT = Path(__file__).resolve().parents[1]
R1_PATHS = ["model.path=/models/r1", "data.train=/data/train.parquet"]
TINY = ["tiny_grpo", "tiny_ngrpo", "tiny_stht"]
R1 = [f"r1_distill_qwen_{s}_{a}" for s in ("1.5b", "7b") for a in ("grpo", "ngrpo")]


def _load(name: str, overrides: list[str] | None = None) -> TrainConfig:
    extra = R1_PATHS if name.startswith("r1_") else []
    return load_config(name, [*extra, *(overrides or [])])


# --- shipped configs -------------------------------------------------------------------------


def test_shipped_configs_are_the_expected_set():
    assert shipped_configs() == sorted(TINY + R1)


@pytest.mark.parametrize("name", TINY + R1)
def test_every_shipped_config_loads_and_validates(name):
    cfg = _load(name)
    assert validate_config(cfg) is cfg
    assert cfg.output_dir == f"runs/{name}"


@pytest.mark.parametrize("name", R1)
def test_r1_configs_require_model_and_data_paths(name):
    with pytest.raises(NgrpoError) as err:
        load_config(name)
    message = str(err.value)
    assert "model.path, data.train" in message
    assert "model.path=" in message and "data.train=" in message
    with pytest.raises(NgrpoError, match=r"not set: data\.train; set it"):
        load_config(name, ["model.path=/m"])


# (mix_top_k, mix_rate, learning_rate, beta) from DESIGN section 2; None: plain GRPO
R1_TABLE = {
    "r1_distill_qwen_1.5b_ngrpo": (2, 0.1, 5e-7, 0.01),
    "r1_distill_qwen_7b_ngrpo": (3, 0.15, 1e-6, 0.001),
    "r1_distill_qwen_1.5b_grpo": (None, None, 1e-6, 0.001),
    "r1_distill_qwen_7b_grpo": (None, None, 1e-6, 0.001),
}


@pytest.mark.parametrize("name", R1)
def test_r1_configs_reproduce_the_released_settings(name):
    cfg = _load(name)
    top_k, rate, lr, beta = R1_TABLE[name]
    if top_k is None:
        assert cfg.exploration.strategy == "none"
    else:
        ex = cfg.exploration
        assert (ex.strategy, ex.mix_top_k, ex.mix_rate) == ("neighbor", top_k, rate)
        assert (ex.metric, ex.anchor, ex.answer_start) == ("cosine", "greedy", "</think>")
    t, r, d, e = cfg.train, cfg.rollout, cfg.data, cfg.eval
    assert (t.learning_rate, t.beta, t.kl_estimator) == (lr, beta, "k3")
    assert (t.prompts_per_step, r.num_generations) == (64, 4)
    assert (t.mini_batch_prompts, t.num_iterations) == (16, 1)
    assert (d.max_prompt_length, r.max_completion_length) == (4096, 8192)
    assert (r.temperature, r.top_p, r.top_k) == (1.0, 1.0, 0)
    assert (t.epsilon, t.clip_high, t.loss_type, t.scale_rewards) == (0.2, 0.2, "token-mean", True)
    assert (e.n, e.temperature, e.top_p) == (32, 0.6, 0.95)
    assert d.prompt_suffix.strip() == (
        "Let's think step by step and output the final answer within \\boxed{}"
    )


def test_tiny_configs_differ_only_in_exploration():
    dicts = {name: config_to_dict(_load(name)) for name in TINY}
    for d in dicts.values():
        d.pop("output_dir")
        d.pop("exploration")
    assert dicts["tiny_grpo"] == dicts["tiny_ngrpo"] == dicts["tiny_stht"]
    assert [_load(n).exploration.strategy for n in TINY] == ["none", "neighbor", "gaussian"]
    assert _load("tiny_grpo").model.path == "base"


def test_repo_configs_dir_and_package_copy_are_identical():
    """One source of truth: configs/ at the repository root shows the package's files."""
    repo_files = sorted(p.name for p in (REPO_ROOT / "configs").glob("*.yaml"))
    assert repo_files == sorted(f"{n}.yaml" for n in shipped_configs())
    for name in repo_files:
        assert (REPO_ROOT / "configs" / name).read_bytes() == (CONFIG_DIR / name).read_bytes()


def test_resolve_config_path_by_name_path_and_unknown(tmp_path):
    assert resolve_config_path("tiny_ngrpo") == CONFIG_DIR / "tiny_ngrpo.yaml"
    assert resolve_config_path("tiny_ngrpo.yaml") == CONFIG_DIR / "tiny_ngrpo.yaml"
    own = tmp_path / "mine.yaml"
    own.write_text("seed: 3\n")
    assert load_config(own).seed == 3
    with pytest.raises(NgrpoError, match="tiny_ngrpo"):
        resolve_config_path("tiny_nrgpo")
    with pytest.raises(NgrpoError, match="not found"):
        resolve_config_path(tmp_path / "missing.yaml")


# --- overrides and coercion ------------------------------------------------------------------


def test_required_overrides_from_the_issue():
    cfg = load_config(
        "tiny_grpo", ["train.steps=3", "output_dir=x", "seed=5", "exploration.strategy=neighbor"]
    )
    assert (cfg.train.steps, cfg.output_dir, cfg.seed) == (3, "x", 5)
    assert cfg.exploration.strategy == "neighbor"
    assert isinstance(cfg.train.steps, int) and isinstance(cfg.seed, int)


def test_override_coercion_by_field_type():
    cfg = load_config(
        None,
        [
            "train.learning_rate=5e-7",  # YAML 1.1 would read this as a string
            "model.gradient_checkpointing=yes",
            "data.shuffle=OFF",
            "eval.limit=null",
            "data.train_limit=1e3",
            "train.epsilon_high=0.28",
            "data.eval_sets=math500, aime24",
            "model.attn_implementation=sdpa",
            "data.prompt_suffix=",
        ],
    )
    assert cfg.train.learning_rate == 5e-7
    assert cfg.model.gradient_checkpointing is True and cfg.data.shuffle is False
    assert cfg.eval.limit is None and cfg.data.train_limit == 1000
    assert cfg.train.clip_high == 0.28
    assert cfg.data.eval_sets == ["math500", "aime24"]
    assert load_config(None, ["data.eval_sets=[a, b]"]).data.eval_sets == ["a", "b"]
    assert cfg.model.attn_implementation == "sdpa" and cfg.data.prompt_suffix == ""


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("train.steps=3.5", ["train.steps", "integer"]),
        ("train.steps=many", ["train.steps", "integer"]),
        ("data.shuffle=maybe", ["data.shuffle", "boolean"]),
        ("train.beta=abc", ["train.beta", "number"]),
        ("train.beta=inf", ["train.beta", "finite"]),
        ("seed=null", ["seed", "integer"]),
    ],
)
def test_bad_override_values_name_the_key(override, words):
    with pytest.raises(NgrpoError) as err:
        load_config(None, [override])
    for word in words:
        assert word in str(err.value)


def test_later_override_wins_and_bad_syntax_is_reported():
    assert load_config(None, ["seed=1", "seed=2"]).seed == 2
    with pytest.raises(NgrpoError, match="key.sub=value"):
        load_config(None, ["train.steps"])
    assert parse_override("data.prompt_suffix=a=b") == ("data.prompt_suffix", "a=b")


def test_yaml_values_are_coerced_too(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rate: 5e-7\n  steps: 4\nexploration:\n")
    cfg = load_config(path)
    assert cfg.train.learning_rate == 5e-7 and cfg.train.steps == 4
    path.write_text("model:\n  path: 7\n")
    with pytest.raises(NgrpoError, match="model.path must be a string"):
        load_config(path)


# --- aliases ---------------------------------------------------------------------------------


def test_every_alias_points_at_a_real_key():
    keys = set(config_keys())
    assert all(target in keys for target in ALIASES.values())
    assert not keys & set(ALIASES)  # an alias never shadows a canonical key


def test_trl_top_level_names_are_accepted():
    cfg = load_config(
        None,
        [
            "num_generations=4",
            "max_completion_length=32",
            "beta=0.05",
            "epsilon=0.1",
            "epsilon_high=0.28",
            "loss_type=grpo",
            "scale_rewards=false",
            "num_iterations=2",
            "importance_sampling_level=sequence",
            "mask_truncated_completions=true",
            "temperature=0.9",
            "top_p=0.8",
            "top_k=20",
            "max_steps=7",
        ],
    )
    r, t = cfg.rollout, cfg.train
    assert (r.num_generations, r.max_completion_length, r.temperature, r.top_p, r.top_k) == (
        4,
        32,
        0.9,
        0.8,
        20,
    )
    assert (t.beta, t.epsilon, t.epsilon_high, t.num_iterations, t.steps) == (0.05, 0.1, 0.28, 2, 7)
    assert t.loss_type == "seq-mean-token-mean"  # stored canonically
    assert (t.scale_rewards, t.importance_sampling_level, t.mask_truncated_completions) == (
        False,
        "sequence",
        True,
    )
    assert cfg.eval.temperature == 0.6  # `temperature` is the rollout's


def test_verl_keys_and_value_aliases(tmp_path):
    path = tmp_path / "verl.yaml"
    path.write_text(
        "actor_rollout_ref:\n"
        "  rollout: {n: 6}\n"
        "  actor: {kl_loss_coef: 0.01, kl_loss_type: low_var_kl, clip_ratio_high: 0.28,\n"
        "          ppo_mini_batch_size: 2}\n"
        "data: {train_batch_size: 4, max_response_length: 40}\n"
    )
    cfg = load_config(path, ["train.clip_low=0.15"])
    assert cfg.rollout.num_generations == 6 and cfg.rollout.max_completion_length == 40
    assert (cfg.train.beta, cfg.train.kl_estimator, cfg.train.epsilon_high) == (0.01, "k3", 0.28)
    assert (cfg.train.prompts_per_step, cfg.train.mini_batch_prompts) == (4, 2)
    assert cfg.train.epsilon == 0.15


def test_two_names_for_one_key_in_a_file_is_an_error(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("beta: 0.1\ntrain:\n  beta: 0.2\n")
    with pytest.raises(NgrpoError, match="both set train.beta"):
        load_config(path)


# --- unknown keys and bad values -------------------------------------------------------------


def test_unknown_key_suggests_close_matches():
    with pytest.raises(NgrpoError, match=r"'train.stpes'.*did you mean train\.steps"):
        load_config(None, ["train.stpes=3"])
    with pytest.raises(NgrpoError, match=r"did you mean train\.steps"):
        load_config(None, ["trian.steps=3"])
    with pytest.raises(NgrpoError, match="valid keys in section 'rollout': num_generations"):
        load_config(None, ["rollout.zzzzzzzz=1"])
    with pytest.raises(NgrpoError, match="valid top-level keys and sections: seed, output_dir"):
        load_config(None, ["qqqqqq=1"])
    with pytest.raises(NgrpoError, match="train is a section"):
        load_config(None, ["train=3"])


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  learning_rat: 1e-4\n")
    with pytest.raises(NgrpoError, match=rf"'train.learning_rat' \({path}\).*train.learning_rate"):
        load_config(path)


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("exploration.strategy=bogus", ["exploration.strategy", "neighbor", "gaussian"]),
        ("exploration.mix_rate=1.5", ["exploration.mix_rate", "[0, 1]"]),
        ("model.dtype=bf16", ["model.dtype", "bfloat16", "float32"]),
        ("model.device=tpu", ["model.device", "cuda:N"]),
        ("train.kl_estimator=k9", ["train.kl_estimator", "k3", "low_var_kl"]),
        ("train.loss_type=dr_grpo", ["train.loss_type", "seq-mean-token-sum"]),
        ("train.importance_sampling_level=sentence", ["importance_sampling_level", "sequence"]),
        ("train.reward=nope", ["train.reward", "math"]),
        ("train.mini_batch_prompts=3", ["train.mini_batch_prompts (3)", "prompts_per_step (16)"]),
        ("rollout.num_generations=1", ["rollout.num_generations", ">= 2"]),
        ("rollout.top_p=0", ["rollout.top_p", "(0.0, 1.0]"]),
        ("rollout.kv_cache=paged", ["rollout.kv_cache", "static", "dynamic"]),
        ("rollout.cuda_graphs=yes", ["rollout.cuda_graphs", "auto", "off"]),
        ("rollout.precision=fp8", ["rollout.precision", "learner", "compute"]),
        ("rollout.keep_decoder=maybe", ["rollout.keep_decoder"]),
        ("train.old_logprobs=learner", ["train.old_logprobs", "auto", "rollout", "recompute"]),
        ("train.rollout_correction=tis", ["train.rollout_correction", "token_truncate"]),
        ("train.rollout_correction_cap=0.5", ["train.rollout_correction_cap", ">= 1"]),
        ("train.epsilon=1.0", ["train.epsilon", "[0.0, 1.0)"]),
        ("train.steps=0", ["train.steps", ">= 1"]),
        ("data.long_prompts=truncate", ["data.long_prompts", "drop, reject"]),
        ("eval.best_metric=accuracy", ["eval.best_metric", "eval/"]),
        ("data.eval_sets=", ["eval.best_metric", "data.eval_sets is empty"]),
        ("train.oom_retry=sometimes", ["train.oom_retry"]),
        ("train.reward_memory_gb=-1", ["train.reward_memory_gb", "> 0 (GB) or null"]),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(override, words):
    with pytest.raises(NgrpoError) as err:
        load_config("tiny_ngrpo", [override])
    for word in words:
        assert word in str(err.value)


def test_malformed_yaml_is_reported_with_its_path(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train: [1, 2\n")
    with pytest.raises(NgrpoError, match="not valid YAML"):
        load_config(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(NgrpoError, match="top level must be a mapping"):
        load_config(path)


# --- save / load round trip ------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY + R1)
def test_save_then_load_gives_an_equal_config(name, tmp_path):
    cfg = _load(name, ["train.steps=3", "train.learning_rate=2.5e-7", "eval.limit=null"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(path) == cfg
    assert not list(path.parent.glob(".*.tmp"))


# --- derived values and device ---------------------------------------------------------------


def test_derived_values_for_the_paper_setting():
    derived = derived_values(_load("r1_distill_qwen_1.5b_ngrpo", ["train.steps=10"]))
    assert derived["rollouts_per_step"] == 256
    assert derived["mini_batches_per_step"] == 4
    assert derived["sequences_per_mini_batch"] == 64
    assert derived["micro_batches_per_mini_batch"] == 16
    budget = ["train.steps=10", "train.max_tokens_per_micro_batch=30000"]  # 2 full rows of 12,288
    derived_budget = derived_values(_load("r1_distill_qwen_1.5b_ngrpo", budget))
    assert derived_budget["micro_batches_per_mini_batch"] == 32  # at most: 64 rows, 2 at a time
    assert derived["optimizer_steps_per_step"] == 4
    assert derived["total_optimizer_steps"] == 40
    assert derived["max_response_tokens_per_step"] == 256 * 8192
    assert derived["max_tokens_per_step"] == 256 * (4096 + 8192)
    tiny = derived_values(load_config("tiny_grpo", ["train.num_iterations=2"]))
    assert (tiny["rollouts_per_step"], tiny["optimizer_steps_per_step"]) == (128, 4)


@pytest.mark.parametrize(
    ("device", "dtype", "cuda", "bf16", "expected"),
    [
        ("auto", "auto", True, True, ("cuda", torch.bfloat16)),
        ("auto", "auto", False, True, ("cpu", torch.float32)),
        ("auto", "auto", True, False, ("cuda", torch.float32)),
        ("cpu", "auto", True, True, ("cpu", torch.float32)),
        ("cpu", "bfloat16", False, True, ("cpu", torch.bfloat16)),
        ("cuda:1", "float16", True, True, ("cuda:1", torch.float16)),
        ("auto", "float32", True, True, ("cuda", torch.float32)),
    ],
)
def test_resolve_device_dtype(device, dtype, cuda, bf16, expected):
    assert resolve_device_dtype(device, dtype, cuda, bf16) == expected


def test_resolve_device_dtype_errors_never_substitute():
    with pytest.raises(NgrpoError, match="CUDA is not available"):
        resolve_device_dtype("cuda", "auto", cuda_available=False)
    with pytest.raises(NgrpoError, match="model.dtype.*float32, bfloat16, float16"):
        resolve_device_dtype("auto", "fp8", cuda_available=True)
    with pytest.raises(NgrpoError, match="does not support it"):
        resolve_device_dtype("cuda", "bfloat16", cuda_available=True, bf16_supported=False)


def test_max_tokens_per_micro_batch_is_optional_and_validated():
    assert _load("tiny_ngrpo").train.max_tokens_per_micro_batch is None
    cfg = _load("tiny_ngrpo", ["train.max_tokens_per_micro_batch=4096"])
    assert cfg.train.max_tokens_per_micro_batch == 4096
    for bad in ("0", "-3", "1.5"):
        with pytest.raises(NgrpoError, match="train.max_tokens_per_micro_batch must be an integer"):
            _load("tiny_ngrpo", [f"train.max_tokens_per_micro_batch={bad}"])
