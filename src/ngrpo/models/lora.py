"""LoRA adapters (peft) on a frozen base: configuration, injection, adapter checkpoints.

With `model.lora.r > 0` the trainer injects LoRA adapters into the policy with peft and trains
only them. What follows from that, and how it deviates from a full-weight run:
- the input-embedding table (and the output projection) are frozen and may not be adapter targets:
  the neighbour index searches one of those tables, so with a frozen table its cache is built once
  and never invalidated (the index rebuilds only when the table's version counter moves, which
  only an update of that table does). Consequently `train.soft_input_grad` has no effect: no
  embedding row trains;
- the reference policy of the KL term (`train.beta > 0`) is the same model with its adapters
  disabled (peft's `disable_adapter` context): no second copy of the weights in memory;
- adapter dropout must be 0: the rollout samples in train mode and the learner must score exactly
  what was sampled (the replay invariant); a stochastic adapter would break it;
- the frozen base is held in the compute dtype (bf16 on a GPU that supports it, fp32 on CPU): it
  needs no fp32 master copy; the adapters are fp32 (peft upcasts them) and compute goes through
  accelerate's autocast as in full-weight training. Accelerate wraps the policy module
  (`ngrpo.learner.policy.SoftInputPolicy`), not the model, so the learner's chunked head sees the
  model's own hidden states and keeps its chunked path with a bf16 base (tested). Per base parameter
  a bf16 LoRA run holds 2 bytes where full-weight training holds 16 (fp32 weights, gradients and
  two AdamW moments);
- checkpoints hold the adapter in peft's own format (`adapter_config.json`,
  `adapter_model.safetensors`, written by `save_pretrained`) next to the tokenizer; the adapter
  config's `base_model_name_or_path` is the resolved local base directory, so `load_model` on a
  checkpoint (and `--resume`) find the base without the run's config. `ngrpo export` merges an
  adapter into a plain Hugging Face model directory.

Loading (the frozen base with fresh or saved adapters for training, a merged model otherwise) is
`ngrpo.models.load`, which calls the pieces here; this module loads no model itself.

The policy the rest of ngrpo sees (rollout, learner, evaluation) is the peft-injected transformers
model itself (`PeftModel.get_base_model()`): its q/k/v/o and MLP projections are peft's
`lora.Linear` modules, which the static decoder calls like any projection, so both decoders run
the adapter exactly. The `PeftModel` wrapper is kept for saving and for `disable_adapter`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ngrpo.utils.errors import NgrpoError

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Names of input-embedding / output-projection modules in common architectures: rejected at
# config time already (the model check below catches any other name for them).
EMBEDDING_NAMES = ("embed_tokens", "lm_head", "wte", "embed_in", "embed_out", "word_embeddings")


@dataclass
class LoraConfig:
    """The `model.lora` section: LoRA adapters trained on a frozen base (off with `r: 0`)."""

    r: int = 0
    """Adapter rank; 0 trains every weight (no adapters)."""
    alpha: float = 32.0
    """Scaling numerator: the adapter's update is multiplied by alpha / r."""
    dropout: float = 0.0
    """Must be 0: the learner must score exactly the computation the rollout sampled from (the
    replay invariant), and the rollout runs in train mode, where dropout would be active."""
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    """Module names (or dotted suffixes) that get adapters: the attention and MLP projections.
    Never the input embedding or the output projection (the neighbour table stays frozen)."""

    @property
    def enabled(self) -> bool:
        return self.r > 0

    def validate(self) -> None:
        """Checks that need no model; `check_targets` checks the names against the model."""
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r < 0:
            raise NgrpoError(f"model.lora.r must be an integer >= 0 (0: off), got {self.r!r}")
        if not self.alpha > 0:
            raise NgrpoError(f"model.lora.alpha must be > 0, got {self.alpha!r}")
        if self.dropout != 0:
            raise NgrpoError(
                f"model.lora.dropout must be 0, got {self.dropout!r}: the rollout samples in "
                "train mode and the learner must score exactly what was sampled (the replay "
                "invariant); a random adapter dropout would make the two differ"
            )
        if not self.target_modules or not all(
            isinstance(t, str) and t.strip() for t in self.target_modules
        ):
            raise NgrpoError("model.lora.target_modules must list at least one module name")
        frozen = [t for t in self.target_modules if t.split(".")[-1] in EMBEDDING_NAMES]
        if frozen:
            raise NgrpoError(_frozen_message(frozen))


def _frozen_message(names: list[str]) -> str:
    return (
        f"model.lora.target_modules: {', '.join(names)} would train the input embedding or the "
        "output projection; they stay frozen under LoRA (the neighbour index searches them and "
        "its cache is built once); remove them"
    )


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` (a FutureWarning on
    every wrap); silenced here only, so the CLI output stays clean."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*",
                                category=FutureWarning)  # fmt: skip
        yield


def _matches(name: str, target: str) -> bool:
    """peft's rule for a string target: the module name equals it or ends with `.target`."""
    return name == target or name.endswith(f".{target}")


def check_targets(model: torch.nn.Module, targets: list[str]) -> None:
    """Every target names at least one module of `model`, and none names its input embedding or
    output projection; `NgrpoError` naming the offending entries otherwise."""
    names = [name for name, _ in model.named_modules() if name]
    unknown = [t for t in targets if not any(_matches(n, t) for n in names)]
    if unknown:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names if not n.rsplit(".", 1)[-1].isdigit()})
        raise NgrpoError(
            f"model.lora.target_modules: {', '.join(unknown)} match no module of "
            f"{type(model).__name__}; module names: {', '.join(leaves)}"
        )
    tables = (model.get_input_embeddings(), model.get_output_embeddings())
    table_names = [n for n, m in model.named_modules() if n and any(m is t for t in tables)]
    frozen = [t for t in targets if any(_matches(n, t) for n in table_names)]
    if frozen:
        raise NgrpoError(_frozen_message(frozen))


def inject(model: torch.nn.Module, cfg: LoraConfig, base_dir: Path):
    """Wrap `model` in a peft `PeftModelForCausalLM` with fresh adapters (B = 0: the adapted model
    starts equal to the base). Only adapter weights require grad afterwards."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    check_targets(model, cfg.target_modules)
    peft_config = PeftLoraConfig(
        task_type="CAUSAL_LM", r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=0.0,
        target_modules=list(cfg.target_modules), bias="none",
        base_model_name_or_path=str(Path(base_dir).resolve()),
    )  # fmt: skip
    with _quiet_peft():
        peft_model = get_peft_model(model, peft_config)
    peft_model.peft_config["default"].base_model_name_or_path = str(Path(base_dir).resolve())
    return peft_model


def is_adapter_dir(path: str | Path) -> bool:
    """A directory holding a peft adapter (adapter_config.json) rather than full weights."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def recorded_base(adapter_dir: str | Path) -> Path:
    """The base-model directory recorded in an adapter's `adapter_config.json`, which must exist
    (`ngrpo.models.load.adapter_base_path` checks it as a model directory)."""
    config_path = Path(adapter_dir) / ADAPTER_CONFIG
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise NgrpoError(f"{config_path} is unreadable ({type(err).__name__}: {err})") from None
    if not (Path(adapter_dir) / ADAPTER_WEIGHTS).is_file():
        raise NgrpoError(f"{Path(adapter_dir) / ADAPTER_WEIGHTS} is missing (adapter weights)")
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not base:
        raise NgrpoError(f"{config_path} names no base model (base_model_name_or_path)")
    if not Path(base).expanduser().is_dir():
        raise NgrpoError(
            f"the base model {base!r} named in {config_path} (base_model_name_or_path) does not "
            "exist; restore it there or edit that field to the base model's directory"
        )
    return Path(base)


def check_checkpoint_kind(checkpoint: Path, lora: bool) -> None:
    """A LoRA run resumes from adapter checkpoints and a full-weight run from full models;
    `NgrpoError` when `model.lora.r` was changed between the two."""
    if is_adapter_dir(checkpoint) and not lora:
        raise NgrpoError(
            f"{checkpoint} holds a LoRA adapter but model.lora.r=0; resume with the run's "
            f"model.lora settings, or start a new run from it with model.path={checkpoint}"
        )
    if lora and not is_adapter_dir(checkpoint):
        raise NgrpoError(
            f"{checkpoint} holds full model weights but model.lora.r > 0; resume without LoRA "
            f"(model.lora.r=0) or start a LoRA run on it with model.path={checkpoint}"
        )


def load_adapter(model: torch.nn.Module, adapter_dir: str | Path, trainable: bool):
    """`model` wrapped with the adapter saved in `adapter_dir` (a `PeftModel`)."""
    from peft import PeftModel

    try:
        with _quiet_peft():
            return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise NgrpoError(f"cannot load the adapter in {str(adapter_dir)!r}: {err}") from err


def adapter_parameters(peft_model) -> dict[str, torch.Tensor]:
    """The trainable (adapter) parameters by name."""
    return {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
