"""Models: loading local Hugging Face directories and LoRA adapters, the embedded tokenizer and
base model, model shapes for benchmarks.

- `load`: resolve a path, check its files, load the tokenizer and the weights;
- `tokenizer`: the embedded word-level tokenizer, chat prompts, saving a tokenizer;
- `base_model`: the embedded base model (shipped in `base/`, checksums verified) and its recipe;
- `lora`: LoRA adapters (peft) on a frozen base;
- `presets`: random weights at real models' shapes (benchmarks, memory planning).
"""
