"""Written by ngrpo next to a tokenizer.json that must load as saved.

transformers 5 swaps in its own tokenizer class for some model types (qwen2: Qwen2Tokenizer, a
byte-level BPE rebuilt from the vocabulary) whatever tokenizer_config.json declares, except when the
config has an `auto_map`. ngrpo writes one pointing here, so that a plain
`AutoTokenizer.from_pretrained(dir)` reads tokenizer.json as it is (without trust_remote_code the
`auto_map` is not followed; with it, this class does the same).
"""

from transformers import PreTrainedTokenizerFast


class NgrpoTokenizer(PreTrainedTokenizerFast):
    """The tokenizer serialised in tokenizer.json, unchanged."""
