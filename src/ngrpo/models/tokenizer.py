"""The embedded word-level tokenizer, built locally with the `tokenizers` library.

One token per word, one per number 0-50 and one per number word (`zero` .. `twenty`), so the
vocabulary stays at about 140 tokens and an embedding's nearest neighbours are other words or
numbers, not byte fragments (after warm-up, mostly the task's surface variants: `7` / `seven`).
Saved as a Hugging Face tokenizer directory (loads with `AutoTokenizer.from_pretrained`) with
bos / eos / pad / unk, `<think>` / `</think>` and a chat template.

Also here, for any tokenizer: `save_tokenizer` (pinned with `pin_tokenizer`, so that a plain
`AutoTokenizer` loads a generic tokenizer back exactly as saved; loading is
`ngrpo.models.load.load_tokenizer`) and the chat prompts (`prompt_text`, `encode_prompt`,
`encode_messages`).
"""

from __future__ import annotations

import json
from pathlib import Path

from ngrpo.tasks.arith import vocabulary_words

BOS, EOS, PAD, UNK = "<|bos|>", "<|eos|>", "<|pad|>", "<|unk|>"
USER, ASSISTANT = "<|user|>", "<|assistant|>"
THINK_START, THINK_END = "<think>", "</think>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, USER, ASSISTANT)
# Not "special": decoding with skip_special_tokens=True keeps them, as DeepSeek-R1's tokenizer does.
THINK_TOKENS = (THINK_START, THINK_END)

# A user turn, then the assistant's turn, which opens with the reasoning.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '<|user|> ' + message['content'] + ' ' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|assistant|> ' + message['content'] + ' ' + eos_token + ' ' }}"
    "{% else %}{{ message['content'] + ' ' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def build_tokenizer(extra_words: list[str] | None = None):
    """A `PreTrainedTokenizerFast` over the embedded task's words (deterministic ids)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = vocabulary_words() + list(extra_words or [])
    vocab: dict[str, int] = {}
    for token in list(SPECIAL_TOKENS) + list(THINK_TOKENS) + words:
        vocab.setdefault(token, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # Words are joined by single spaces (no token carries the "##" continuation prefix).
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[USER, ASSISTANT],
        clean_up_tokenization_spaces=False,
        padding_side="left",
        model_max_length=512,
    )
    tokenizer.add_tokens(list(THINK_TOKENS))  # already in vocab: marks them as whole words
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tokenizer(tokenizer, out_dir: str | Path) -> None:
    """`save_pretrained`, pinned so that a plain `AutoTokenizer` loads it back unchanged
    (`pin_tokenizer`)."""
    tokenizer.save_pretrained(str(out_dir))
    pin_tokenizer(out_dir)


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
    declared class without following the map). Model-specific tokenizers are left as saved, and
    so is a generic one that a plain `AutoTokenizer` already loads unchanged (a BPE tokenizer of
    one's own next to a Llama model): only a directory that needs the pin gets it.
    """
    model_dir = Path(model_dir)
    config_path = model_dir / "tokenizer_config.json"
    if declared_tokenizer_class(model_dir) not in GENERIC_TOKENIZER_CLASSES:
        return
    if _loads_as_saved(model_dir):
        return  # e.g. a BPE tokenizer next to a Llama model: nothing to pin
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["auto_map"] = {"AutoTokenizer": [None, f"{PINNED_TOKENIZER_MODULE}.NgrpoTokenizer"]}
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", "utf-8")
    (model_dir / f"{PINNED_TOKENIZER_MODULE}.py").write_text(_PINNED_TOKENIZER_SOURCE, "utf-8")


def _loads_as_saved(model_dir: Path) -> bool:
    """Whether a plain `AutoTokenizer.from_pretrained(model_dir)` gives the ids tokenizer.json
    gives, on a probe of ordinary text and the first 300 tokens of the vocabulary."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    saved = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
    try:
        auto = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception:  # noqa: BLE001 - any failure to load plainly is a reason to pin
        return False
    probe = "Tom has 3 apples and buys 12 more . How many ? 7 + 5 = 12 \\boxed{12} "
    probe += saved.decode(list(range(min(len(saved), 300))))
    return auto(probe)["input_ids"] == saved(probe)["input_ids"]


def declared_tokenizer_class(model_dir: Path) -> str | None:
    config = model_dir / "tokenizer_config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class")
    except (OSError, json.JSONDecodeError):
        return None


def prompt_text(tokenizer, problem: str) -> str:
    """The chat-formatted prompt for one problem, ending where the assistant starts writing."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": problem}], tokenize=False, add_generation_prompt=True
    )


def encode_prompt(tokenizer, problem: str) -> list[int]:
    return tokenizer(prompt_text(tokenizer, problem), add_special_tokens=False)["input_ids"]


def encode_messages(tokenizer, messages) -> list[int]:
    """Token ids of a whole chat conversation, ending where the assistant starts writing."""
    text = tokenizer.apply_chat_template(
        [dict(m) for m in messages], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]
