"""Build a tiny model of your own: a byte-level BPE tokenizer trained on the problems, with a chat
template, and a random Llama-architecture decoder, saved as a Hugging Face model directory.

    python make_model.py OUT_DIR

What `ngrpo train` needs of a model directory is what `save_pretrained` writes: `config.json`,
the weights (`model.safetensors`), and the tokenizer (`tokenizer.json`, `tokenizer_config.json`
with a chat template; without one, prompts are the raw problem text). The model has 256 positions
(`max_position_embeddings`): ngrpo refuses a prompt + response budget beyond that.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

SPECIAL = ("<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
POSITIONS = 256


def corpus() -> list[str]:
    """Text the tokenizer is trained on: the problems and answers of `make_data.py`, plus digits."""
    problems = runpy.run_path(str(Path(__file__).with_name("make_data.py")))["problems"]
    texts = []
    for question, steps, answer in problems(400, seed=1):
        texts += [question, f"{steps}\n#### {answer}", r"\boxed{" + answer + "}"]
    return texts + [" ".join(map(str, range(200)))]


def build_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    bpe.train_from_iterator(corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        additional_special_tokens=list(SPECIAL[3:]),
    )  # fmt: skip
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(tokenizer, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=POSITIONS,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def main(out_dir: str) -> Path:
    out = Path(out_dir)
    tokenizer = build_tokenizer()
    build_model(tokenizer).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


if __name__ == "__main__":
    print(main(sys.argv[1] if len(sys.argv) > 1 else "own_model"))
