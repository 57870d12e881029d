"""Loading local Hugging Face causal language models, with errors a user can act on.

Any local directory written by `save_pretrained` works (no remote code, no hub access), and a peft
LoRA adapter directory whose adapter_config.json names a local base (`ngrpo.models.lora`). The
special path `base` means the embedded base model (built on first use, see
`ngrpo.models.base_model`).

Damaged files are reported by name before transformers sees them: every JSON file the loader reads
must parse, and every safetensors file must have a complete header that covers the file (a
truncated download or an interrupted copy). Damage inside the tensor data itself, past an intact
header, cannot be detected without checksums.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ngrpo.utils.errors import NgrpoError

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
MODEL_JSON_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")
TOKENIZER_JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
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
    """`base` -> the embedded base model directory; otherwise a checked local directory."""
    if str(path) == "base":
        from ngrpo.models.base_model import ensure_base_model

        return ensure_base_model()
    model_dir = Path(path).expanduser()
    if not model_dir.is_dir():
        raise NgrpoError(f"model directory {str(model_dir)!r} does not exist")
    if (model_dir / "adapter_config.json").is_file() and not (model_dir / "config.json").is_file():
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


# Tokenizer classes that mean "exactly what tokenizer.json says" (no model-specific rebuild).
GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


PINNED_TOKENIZER_MODULE = "tokenization_ngrpo"
_PINNED_TOKENIZER_SOURCE = '''"""Written by ngrpo next to a tokenizer.json that must load as saved.

transformers 5 swaps in its own tokenizer class for some model types (qwen2: Qwen2Tokenizer, a
byte-level BPE rebuilt from the vocabulary) whatever tokenizer_config.json declares, except when the
config has an `auto_map`. ngrpo writes one pointing here, so that a plain
`AutoTokenizer.from_pretrained(dir)` reads tokenizer.json as it is (without trust_remote_code the
`auto_map` is not followed; with it, this class does the same).
"""

from transformers import PreTrainedTokenizerFast


class NgrpoTokenizer(PreTrainedTokenizerFast):
    """The tokenizer serialised in tokenizer.json, unchanged."""
'''


def pin_tokenizer(model_dir: str | Path) -> None:
    """Make plain `AutoTokenizer.from_pretrained(model_dir)` load the saved tokenizer.json as is.

    Only for generic tokenizers (`GENERIC_TOKENIZER_CLASSES`, e.g. the embedded word-level one):
    transformers 5.24 maps the `qwen2` model type to `Qwen2Tokenizer`, ignoring the declared
    class, and rebuilds a byte-level BPE from the vocabulary, which splits words and numbers the
    embedded model never saw. An `auto_map` entry in tokenizer_config.json takes AutoTokenizer off
    that path (for model types it lists as having wrong hub tokenizer classes, it then loads the
    declared class without following the map). Model-specific tokenizers are left as saved.
    """
    model_dir = Path(model_dir)
    config_path = model_dir / "tokenizer_config.json"
    if declared_tokenizer_class(model_dir) not in GENERIC_TOKENIZER_CLASSES:
        return
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["auto_map"] = {"AutoTokenizer": [None, f"{PINNED_TOKENIZER_MODULE}.NgrpoTokenizer"]}
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", "utf-8")
    (model_dir / f"{PINNED_TOKENIZER_MODULE}.py").write_text(_PINNED_TOKENIZER_SOURCE, "utf-8")


def declared_tokenizer_class(model_dir: Path) -> str | None:
    config = model_dir / "tokenizer_config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class")
    except (OSError, json.JSONDecodeError):
        return None


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
    try:
        tokenizer = loader.from_pretrained(str(model_dir))
    except Exception as err:  # noqa: BLE001 - tokenizers raises a bare Exception for bad files
        raise NgrpoError(
            f"cannot load a tokenizer from {str(model_dir)!r}: {_first_line(err)}"
        ) from err
    if tokenizer.pad_token_id is None:
        # Padding is masked everywhere; reusing EOS keeps the vocabulary unchanged.
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
):
    """A causal LM from a local directory, in eval mode, on `device` with parameters in `dtype`.

    A LoRA adapter directory (a LoRA run's checkpoint) loads as its base model (the directory in
    its adapter_config.json) with the adapter merged in (`ngrpo.models.lora.load_merged`)."""
    from transformers import AutoModelForCausalLM

    from ngrpo.models.lora import is_adapter_dir, load_merged

    model_dir = resolve_model_path(path)
    if is_adapter_dir(model_dir) and not (model_dir / "config.json").is_file():
        return load_merged(model_dir, device, dtype)
    check_weight_files(model_dir)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=dtype, trust_remote_code=False
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
