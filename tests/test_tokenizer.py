"""The embedded word-level tokenizer: round trip, HF directory, chat template, special tokens."""

from __future__ import annotations

from transformers import AutoTokenizer

from ngrpo.models.tokenizer import (
    ASSISTANT,
    THINK_END,
    THINK_START,
    USER,
    encode_prompt,
    prompt_text,
)
from ngrpo.tasks import generate


def test_round_trip_on_every_split(embedded_tokenizer):
    tok = embedded_tokenizer
    for split in ("arith-train", "arith-id", "arith-ood"):
        for p in generate(split, 200):
            for text in (p.problem, p.solution):
                ids = tok(text, add_special_tokens=False)["input_ids"]
                assert tok.unk_token_id not in ids
                assert tok.decode(ids) == text


def test_numbers_and_words_are_single_tokens(embedded_tokenizer):
    tok = embedded_tokenizer
    for word in [
        "0",
        "7",
        "seven",
        "twenty",
        "42",
        "50",
        "spends",
        "thus",
        "apples",
        "doubles",
        "\\boxed{",
        THINK_END,
    ]:
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1, word
    assert 120 <= len(tok) <= 400


def test_saved_directory_loads_with_auto_tokenizer(embedded_tokenizer, tmp_path):
    embedded_tokenizer.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert len(tok) == len(embedded_tokenizer)
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert getattr(tok, name) is not None
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id}) == 4
    problem = generate("arith-id", 1)[0].problem
    assert encode_prompt(tok, problem) == encode_prompt(embedded_tokenizer, problem)
    text = prompt_text(tok, problem)
    assert text.startswith(tok.bos_token + USER) and text.endswith(ASSISTANT)
    # think markers survive skip_special_tokens, as in DeepSeek-R1's tokenizer
    ids = tok(f"{THINK_START} 1 + 1 = 2 . {THINK_END} {tok.eos_token}", add_special_tokens=False)
    assert tok.decode(ids["input_ids"], skip_special_tokens=True) == (
        f"{THINK_START} 1 + 1 = 2 . {THINK_END}"
    )


def test_unknown_words_map_to_unk(embedded_tokenizer):
    ids = embedded_tokenizer("Tom has 1000 zebras", add_special_tokens=False)["input_ids"]
    assert ids.count(embedded_tokenizer.unk_token_id) == 2


def test_model_directory_keeps_the_word_level_tokenizer(embedded_tokenizer, tmp_path):
    """transformers 5 swaps Qwen2Tokenizer in for qwen2 model directories; our loader must not."""
    import torch

    from ngrpo.models.base_model import BaseModelRecipe, make_model
    from ngrpo.models.load import load_tokenizer

    torch.manual_seed(0)
    make_model(
        len(embedded_tokenizer),
        embedded_tokenizer,
        BaseModelRecipe(
            hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=32
        ),
    ).save_pretrained(tmp_path)
    embedded_tokenizer.save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path)
    problem = generate("arith-id", 1)[0]
    ids = tok(problem.problem, add_special_tokens=False)["input_ids"]
    assert ids == embedded_tokenizer(problem.problem, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == problem.problem
