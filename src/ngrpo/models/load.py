"""Loading local Hugging Face causal language models, with errors a user can act on: one path.

    resolve_model_path          `base` -> the shipped base model (checksums verified); a LoRA
                                adapter directory -> itself; else a checked model directory
    check_json_files,           every JSON file read must parse; every safetensors file must have
      check_weight_files        an intact header covering the file
    load_tokenizer              the directory's tokenizer, exactly as saved
    load_model                  full weights, or the adapter's base with the adapter merged in
                                (inference: evaluation, export, the Python API, benchmarks)
    load_policy                 what the trainer trains: full weights in fp32, or the frozen base
                                with fresh or resumed LoRA adapters; dropout off, train mode

Any local directory written by `save_pretrained` works (no remote code, no hub access), and a peft
LoRA adapter directory whose adapter_config.json names a local base (`ngrpo.models.lora`). Damage
inside the tensor data itself, past an intact header (a truncated download or an interrupted copy
is caught by the header check), cannot be detected without checksums.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ngrpo.models.base_model import is_shipped_dir, shipped_base_dir
from ngrpo.models.lora import (
    ADAPTER_CONFIG,
    LoraConfig,
    check_checkpoint_kind,
    check_targets,
    inject,
    is_adapter_dir,
    load_adapter,
    recorded_base,
)
from ngrpo.models.tokenizer import GENERIC_TOKENIZER_CLASSES, declared_tokenizer_class
from ngrpo.utils.errors import NgrpoError
from ngrpo.utils.progress import no_library_progress

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
MODEL_JSON_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")
TOKENIZER_JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# Files that define a tokenizer (fast: tokenizer.json; slow: a vocabulary); a model directory
# with none of them has no tokenizer (tokenizer_config.json alone only configures one).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
# Errors transformers raises for unreadable model files (after the checks below).
_LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError, EOFError)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def check_json_files(model_dir: Path, names: tuple[str, ...]) -> None:
    """Every named JSON file present in `model_dir` parses, else `NgrpoError` naming it."""
    for name in names:
        path = model_dir / name
        if not path.is_file():
            continue
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise NgrpoError(f"{path} is corrupted or truncated ({_first_line(err)})") from None


def _safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values()
        return [model_dir / name for name in sorted(set(shards))]
    single = model_dir / "model.safetensors"
    return [single] if single.is_file() else []


def check_weight_files(model_dir: Path) -> None:
    """Each safetensors file exists and has an intact header covering the file."""
    from safetensors import safe_open

    check_json_files(model_dir, MODEL_JSON_FILES)
    for path in _safetensors_files(model_dir):
        if not path.is_file():
            raise NgrpoError(f"{path} is missing (listed in model.safetensors.index.json)")
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as err:  # noqa: BLE001 - SafetensorError and I/O errors alike
            raise NgrpoError(f"{path} is corrupted or truncated ({_first_line(err)})") from None


def resolve_model_path(path: str | Path) -> Path:
    """`base` -> the shipped base model's directory (its checksums verified, as whenever that
    directory is named by its path); otherwise a checked local directory."""
    if str(path) == "base" or is_shipped_dir(path):
        return shipped_base_dir()
    model_dir = Path(path).expanduser()
    if not model_dir.is_dir():
        raise NgrpoError(f"model directory {str(model_dir)!r} does not exist")
    if _adapter_only(model_dir):
        return model_dir  # a LoRA adapter (`ngrpo.models.lora`): `load_model` loads base + adapter
    if not (model_dir / "config.json").is_file():
        raise NgrpoError(
            f"{str(model_dir)!r} is not a model directory: no config.json "
            "(expected a directory written by save_pretrained)"
        )
    if not any((model_dir / name).is_file() for name in WEIGHT_FILES):
        raise NgrpoError(
            f"{str(model_dir)!r} has no model weights (looked for {', '.join(WEIGHT_FILES)})"
        )
    return model_dir


def _adapter_only(model_dir: Path) -> bool:
    """A peft adapter directory without full weights of its own (a LoRA run's checkpoint)."""
    return is_adapter_dir(model_dir) and not (model_dir / "config.json").is_file()


def adapter_base_path(adapter_dir: str | Path) -> Path:
    """The local base-model directory recorded in an adapter's `adapter_config.json`, checked."""
    return resolve_model_path(recorded_base(adapter_dir))


def resume_base(adapter_dir: Path, configured: Path) -> Path:
    """The base to resume a LoRA run on: the one recorded in the checkpoint's adapter config,
    which must be the run's `model.path` (resolved), else `NgrpoError` naming both."""
    recorded = adapter_base_path(adapter_dir)
    if recorded.resolve() != Path(configured).resolve():
        raise NgrpoError(
            f"{adapter_dir / ADAPTER_CONFIG} was trained on the base {str(recorded)!r} but "
            f"model.path resolves to {str(configured)!r}; resume with model.path={recorded}"
        )
    return recorded


def load_tokenizer(path: str | Path):
    """The tokenizer saved in a model directory.

    A directory whose tokenizer is the generic fast tokenizer (as the embedded one) is loaded
    exactly as saved: transformers 5's `AutoTokenizer` swaps in `Qwen2Tokenizer` (byte-level BPE,
    rebuilt from the vocabulary alone) for every `qwen2` model directory, which breaks a word-level
    tokenizer. Other tokenizers go through `AutoTokenizer` as usual.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    model_dir = resolve_model_path(path)
    loader = (
        PreTrainedTokenizerFast
        if declared_tokenizer_class(model_dir) in GENERIC_TOKENIZER_CLASSES
        else AutoTokenizer
    )
    check_json_files(model_dir, TOKENIZER_JSON_FILES)
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        config = " (tokenizer_config.json alone defines none)" if (
            model_dir / "tokenizer_config.json").is_file() else ""  # fmt: skip
        raise NgrpoError(
            f"{str(model_dir)!r} has no tokenizer files: looked for "
            f"{', '.join(TOKENIZER_FILES)}{config}; save the tokenizer next to the model "
            "(tokenizer.save_pretrained(DIR))"
        )
    try:
        tokenizer = loader.from_pretrained(str(model_dir))
    except Exception as err:  # noqa: BLE001 - tokenizers raises a bare Exception for bad files
        message = " ".join(str(err).split())  # the whole message, on one line
        raise NgrpoError(
            f"cannot load a tokenizer from {str(model_dir)!r}: {type(err).__name__}: {message}"
        ) from err
    if tokenizer.pad_token_id is None:
        # Padding is masked everywhere; reusing EOS keeps the vocabulary unchanged.
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
):
    """A causal LM from a local directory, in eval mode, on `device` with parameters in `dtype`.

    `attn_implementation` (`model.attn_implementation`: eager, sdpa, flash_attention_2, ...) is
    passed to `from_pretrained`; None keeps transformers' default (SDPA where available).
    A LoRA adapter directory (a LoRA run's checkpoint) loads as its base model (the directory in
    its adapter_config.json) with the adapter merged in: a plain transformers model (no peft
    layers); the merge is done in fp32 and the result cast to `dtype`."""
    from transformers import AutoModelForCausalLM

    model_dir = resolve_model_path(path)
    if _adapter_only(model_dir):
        base = load_model(adapter_base_path(model_dir), "cpu", torch.float32, attn_implementation)
        merged = load_adapter(base, model_dir, trainable=False).merge_and_unload()
        return merged.to(device=device, dtype=dtype).eval()
    check_weight_files(model_dir)
    chosen = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    try:
        with no_library_progress():  # library use: no "Loading weights" bar
            model = AutoModelForCausalLM.from_pretrained(
                str(model_dir), dtype=dtype, trust_remote_code=False, **chosen
            )
    except _LOAD_ERRORS as err:
        raise NgrpoError(
            f"cannot load a causal LM from {str(model_dir)!r}: {_first_line(err)}"
        ) from err
    if model.get_input_embeddings() is None:
        raise NgrpoError(f"model in {str(model_dir)!r} has no input embeddings")
    return model.to(device).eval()


def load_model_and_tokenizer(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
):
    return load_model(path, device, dtype), load_tokenizer(path)


# ------------------------------------------------------------------------------------ training


def set_activation_checkpointing(model, on: bool) -> None:
    """Activation (gradient) checkpointing of a transformers model's body on or off, under the
    name its version has: `activation_checkpointing_enable` / `_disable` since transformers 5.24
    (whose old `gradient_checkpointing_*` names warn of their removal), the old ones before."""
    verb = "enable" if on else "disable"
    method = getattr(model, f"activation_checkpointing_{verb}", None)
    (method or getattr(model, f"gradient_checkpointing_{verb}"))()


def disable_dropout(model: torch.nn.Module) -> None:
    """Zero every dropout probability: dropout modules, attention-dropout rates, the config.

    Training mode stays on (gradient checkpointing needs it), but a stochastic forward would break
    the replay invariant: the learner must score exactly the computation the rollout sampled from.
    """
    names = ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop",
             "attn_pdrop")  # fmt: skip
    # Attention layers copy their rate from the config at construction: zero both.
    for owner in [model.config, *model.modules()]:
        if isinstance(owner, torch.nn.Dropout):
            owner.p = 0.0
        for name in names:
            if isinstance(getattr(owner, name, None), float):
                setattr(owner, name, 0.0)


def load_lora(
    cfg: LoraConfig,
    base_dir: Path,
    adapter_dir: Path | None,
    device: str | torch.device,
    base_dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
):
    """(peft model, policy) for training: the frozen base in `base_dtype` with fresh adapters, or
    with the trainable adapter of checkpoint `adapter_dir` (resume); the adapters are fp32 either
    way (peft upcasts them). The policy is the injected transformers model that rollout, learner
    and evaluation call."""
    model = load_model(base_dir, device, base_dtype, attn_implementation)
    if adapter_dir is None:
        peft_model = inject(model, cfg, base_dir)
    else:
        check_targets(model, cfg.target_modules)
        peft_model = load_adapter(model, adapter_dir, trainable=True)
    return peft_model, peft_model.get_base_model()


@dataclass
class TrainingPolicy:
    """What the trainer trains, as `load_policy` loaded it."""

    policy: torch.nn.Module  # train mode, dropout off (LoRA: the peft-injected transformers model)
    tokenizer: object
    base_dir: Path  # the base model (LoRA resume: the one the adapter was trained on)
    weights_dir: Path  # where the trained weights came from: the resumed checkpoint, else the base
    peft_model: object | None = None  # LoRA: the PeftModel around `policy` (saving, reference)


def load_policy(
    path: str | Path,
    lora: LoraConfig,
    checkpoint: Path | None,
    device: str | torch.device,
    compute_dtype: torch.dtype,
    *,
    gradient_checkpointing: bool = False,
    attn_implementation: str | None = None,
) -> TrainingPolicy:
    """The policy a run trains, from the run's `model.path` and the checkpoint it resumes (None:
    a new run).

    Resolve `path`; a checkpoint must hold what `lora` says (an adapter, or full weights), and a
    LoRA run resumes on the base its adapter was trained on; the base's tokenizer; then the
    weights. Master weights stay fp32 (bf16 / fp16 compute comes from accelerate's autocast): a
    full-weight run loads the checkpoint (or the base) in fp32; a LoRA run holds the frozen base in
    `compute_dtype` (it needs no fp32 master copy) with fresh adapters or the checkpoint's (fp32,
    `ngrpo.models.lora`). Dropout is zeroed (`disable_dropout`) and the policy is in train mode.
    `attn_implementation`: as in `load_model`.
    """
    base_dir = resolve_model_path(path)
    if checkpoint is not None:
        check_checkpoint_kind(checkpoint, lora.enabled)  # model.lora.r changed since the run began
        if lora.enabled:
            base_dir = resume_base(checkpoint, base_dir)  # the base the adapter was trained on
    tokenizer = load_tokenizer(base_dir)
    peft_model = None
    if lora.enabled:
        peft_model, policy = load_lora(
            lora, base_dir, checkpoint, device, compute_dtype, attn_implementation
        )
    else:
        policy = load_model(checkpoint or base_dir, device, torch.float32, attn_implementation)
    if gradient_checkpointing:
        set_activation_checkpointing(policy, True)
    disable_dropout(policy)  # the learner must see exactly what the rollout saw (replay)
    policy.train()
    return TrainingPolicy(policy, tokenizer, base_dir, checkpoint or base_dir, peft_model)
