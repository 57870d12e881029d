"""The embedded base model: a small `Qwen2ForCausalLM` warm-started on the arithmetic task.

**One base model for everyone.** The canonical weights ship inside the package (`base/`, 3.3 MB:
safetensors weights, the tokenizer, `build_info.json`, the build record: seed, recipe, library
versions, CPU, date). `model.path: base`, `--model base`, the demo and the tests use them;
`shipped_base_dir` checks every shipped file against `SHIPPED_SHA256` on each use and stops with
an error naming a damaged file. The recipe below (`ensure_base_model`, `ngrpo build-base`) is
how they were made, but its outcome depends on library versions and CPU kernels (800 supervised
steps amplify every rounding difference: the base behind earlier results, built with transformers
5.24, evaluated at arith-id mean@16 30.8%, the shipped one at 42.9%, and rebuilds on its build
machine with its library versions land at max |Δ weight| 0.40 from it), so a rebuild lands in
`$NGRPO_HOME` and `compare_with_shipped` reports how far it is from the shipped weights.

DeepSeek-R1-Distill-Qwen is a Qwen2 model; this is the same architecture (RMSNorm, SwiGLU, GQA,
rotary positions, untied input / output embeddings) at toy size, so everything that runs on it runs
unchanged on the real checkpoints. The base policy must be right sometimes, not always, so that
GRPO groups have reward variance, and its mistakes must be of a kind RL can fix across problems.
So the warm-up data come from an imperfect teacher (`ngrpo.tasks.arith.sloppy_solution`): its
arithmetic is always right, but it skips each event of the story with probability `skip_rate`.
The model learns the arithmetic facts of the small task well and copies the teacher's habit of
skipping steps, a behaviour shared by all problems that a reward for the right answer removes
quickly (the issue-10 redesign; before it, errors were unlearnt facts and GRPO moved accuracy by
a few points). The build is deterministic for a seed (same machine and torch build), written to a
temporary directory and renamed into place, and re-used when it exists.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ngrpo.utils.errors import NgrpoError

log = logging.getLogger(__name__)

BUILD_VERSION = 2  # bump when the recipe changes: old cached builds are then ignored
BUILD_INFO = "build_info.json"

# The shipped base model (`ngrpo build-base --seed 0`, recorded in its build_info.json) and the
# SHA-256 of every file in it: checked whenever it is used.
SHIPPED_DIR = Path(__file__).resolve().parent / "base"
SHIPPED_SHA256 = {
    "model.safetensors": "52ab9910ac213e5abcf2d1abb7f438df3f188e222a725aef74adbc002b47268e",
    "config.json": "5d422c6f7fdb65a00a193bf2180b1cd4df4d879cf20e90f438f73c3f8b3bcadc",
    "generation_config.json": "d4c316481d966a942151cbcafe32bd4d21f48aae92c68c76da0e56c665e18bca",
    "tokenizer.json": "8060594f7c5d3eaf96e03e7c3b360d017f8955c3a4d97737ac03c337e0f32eab",
    "tokenizer_config.json": "028635b9969b36aae9b130cc5fafbdd3999d3880dddaa8aa2cccca60e0a289c4",
    "chat_template.jinja": "2357fbe595cfaf6a388d420f1136e7b45e474c0cf25a0133278dc45814dcfc35",
    "tokenization_ngrpo.py": "2cd5e475579c371c9fe995976f02a7ca2ec58583dfaef7ce87e8b4a0f1d007bc",
}


@dataclass(frozen=True)
class BaseModelRecipe:
    """Architecture and supervised warm-up of the embedded base model."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    max_positions: int = 256
    sft_steps: int = 800
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 60
    weight_decay: float = 0.01
    num_train_problems: int = 20_000
    skip_rate: float = 0.15  # the teacher skips each event with this probability
    eval_problems: int = 100  # per split, for the accuracy recorded in build_info.json


def cache_root() -> Path:
    """`$NGRPO_HOME`, else `~/.cache/ngrpo`."""
    return Path(os.environ.get("NGRPO_HOME", Path.home() / ".cache" / "ngrpo")).expanduser()


def default_base_dir(seed: int = 0) -> Path:
    return cache_root() / f"base-v{BUILD_VERSION}-seed{seed}"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_shipped(model_dir: Path = SHIPPED_DIR) -> None:
    """Every file of `SHIPPED_SHA256` in `model_dir` has its recorded checksum, else `NgrpoError`
    naming the first missing or damaged file."""
    for name, expected in SHIPPED_SHA256.items():
        path = model_dir / name
        try:
            found = sha256_file(path)
        except OSError as err:
            raise NgrpoError(
                f"the shipped base model file {path} cannot be read ({err.strerror}); "
                "reinstall ngrpo"
            ) from None
        if found != expected:
            raise NgrpoError(
                f"the shipped base model file {path} is damaged: SHA-256 {found[:12]}…, expected "
                f"{expected[:12]}…; reinstall ngrpo (in a checkout: git checkout -- {path.name})"
            )


def shipped_base_dir() -> Path:
    """The directory of the shipped base model, its checksums verified (`model.path: base`)."""
    verify_shipped(SHIPPED_DIR)
    return SHIPPED_DIR


def is_shipped_dir(model_dir: str | Path) -> bool:
    """True when `model_dir` is the shipped base model's directory."""
    try:
        return Path(model_dir).expanduser().resolve() == SHIPPED_DIR
    except OSError:
        return False


def compare_with_shipped(model_dir: Path) -> dict:
    """How far a base-model build is from the shipped one: `identical` (same weight bytes),
    `max_abs_diff` and `mean_abs_diff` over all parameters (None when the shapes differ), the
    tensor with the largest difference, and both builds' recorded accuracy (`accuracy_t1`:
    100 problems per split, 8 samples at temperature 1, the build seed as sampling seed)."""
    from safetensors.torch import load_file

    shipped = shipped_base_dir()
    ours = load_file(model_dir / "model.safetensors")
    theirs = load_file(shipped / "model.safetensors")
    result: dict = {
        "identical": sha256_file(model_dir / "model.safetensors")
        == SHIPPED_SHA256["model.safetensors"],
        "max_abs_diff": None, "mean_abs_diff": None, "largest_in": None,
    }  # fmt: skip
    if ours.keys() == theirs.keys() and all(ours[k].shape == theirs[k].shape for k in ours):
        diffs = {k: (ours[k].float() - theirs[k].float()).abs() for k in ours}
        largest = max(diffs, key=lambda k: float(diffs[k].max()))
        total = sum(float(d.sum()) for d in diffs.values())
        result.update(
            max_abs_diff=float(diffs[largest].max()), largest_in=largest,
            mean_abs_diff=total / sum(d.numel() for d in diffs.values()),
        )  # fmt: skip
    for name, directory in (("accuracy_t1", model_dir), ("shipped_accuracy_t1", shipped)):
        info = json.loads((directory / BUILD_INFO).read_text())
        result[name] = info.get("accuracy_t1")
    return result


def is_complete_build(model_dir: Path) -> bool:
    info = model_dir / BUILD_INFO
    if not info.is_file():
        return False
    try:
        return json.loads(info.read_text()).get("build_version") == BUILD_VERSION
    except (OSError, json.JSONDecodeError):
        return False


def ensure_base_model(
    out: str | Path | None = None,
    seed: int = 0,
    force: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    recipe: BaseModelRecipe | None = None,
) -> Path:
    """The directory of the embedded base model, built first if needed.

    `progress(stage, done, total)` is called during the build (the CLI draws a bar from it).
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise NgrpoError(f"seed must be a non-negative integer, got {seed!r}")
    model_dir = Path(out).expanduser() if out is not None else default_base_dir(seed)
    if is_complete_build(model_dir) and not force:
        return model_dir
    try:
        model_dir.parent.mkdir(parents=True, exist_ok=True)
        lock = (model_dir.parent / f".{model_dir.name}.lock").open("w")
    except OSError as err:
        raise NgrpoError(f"cannot write to {str(model_dir.parent)!r}: {err.strerror}") from err
    with lock:
        # One builder at a time: a second process waits here, then finds the build complete.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_complete_build(model_dir) and not force:
            return model_dir
        _build_into(model_dir, seed, force, recipe or BaseModelRecipe(), progress)
    return model_dir


def _build_into(model_dir: Path, seed: int, force: bool, recipe: BaseModelRecipe, progress) -> None:
    if model_dir.exists() and not force and any(model_dir.iterdir()):
        raise NgrpoError(
            f"{str(model_dir)!r} exists but holds no complete base-model build; "
            "pass --force to overwrite it or choose another --out"
        )
    tmp_dir = model_dir.parent / f".{model_dir.name}.tmp-{os.getpid()}"
    try:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)
        tmp_dir.mkdir()
    except OSError as err:
        raise NgrpoError(f"cannot write to {str(model_dir.parent)!r}: {err.strerror}") from err
    try:
        build_base_model(tmp_dir, seed=seed, recipe=recipe, progress=progress)
        if model_dir.exists():
            shutil.rmtree(model_dir)
        tmp_dir.rename(model_dir)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)


def make_model(vocab_size: int, tokenizer, recipe: BaseModelRecipe):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_kv_heads,
        max_position_embeddings=recipe.max_positions,
        tie_word_embeddings=False,  # as DeepSeek-R1-Distill-Qwen-1.5B
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen2ForCausalLM(config)


def _sft_examples(tokenizer, problems, skip_rate: float, seed: int) -> list[tuple[list[int], int]]:
    """(full token ids, number of prompt tokens) per teacher solution (see module docstring)."""
    import random

    from ngrpo.models.tokenizer import encode_prompt
    from ngrpo.tasks.arith import sloppy_solution

    rng = random.Random(seed)
    examples = []
    for p in problems:
        prompt = encode_prompt(tokenizer, p.problem)
        solution = sloppy_solution(p, rng, skip_rate)
        response = tokenizer(solution, add_special_tokens=False)["input_ids"]
        examples.append((prompt + response + [tokenizer.eos_token_id], len(prompt)))
    return examples


def _collate(examples, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and labels (-100 on prompt and padding)."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full_like(input_ids, -100)  # (B, T)
    attention = torch.zeros_like(input_ids)  # (B, T)
    for row, (ids, prompt_len) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        labels[row, prompt_len : len(ids)] = input_ids[row, prompt_len : len(ids)]
    return input_ids, attention, labels


def supervised_warmup(model, examples, recipe: BaseModelRecipe, seed: int, progress=None) -> list:
    """Next-token training on the responses of `examples`; returns the loss curve (every 50)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay
    )

    def lr_factor(step: int) -> float:  # linear warm-up, cosine decay to 10 %
        if step < recipe.warmup_steps:
            return (step + 1) / recipe.warmup_steps
        frac = (step - recipe.warmup_steps) / max(1, recipe.sft_steps - recipe.warmup_steps)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * frac))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    pad_id = model.config.pad_token_id
    model.train()
    losses = []
    for step in range(recipe.sft_steps):
        rows = torch.randint(len(examples), (recipe.batch_size,), generator=generator)
        input_ids, attention, labels = _collate([examples[i] for i in rows.tolist()], pad_id)
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == recipe.sft_steps - 1:
            losses.append((step, round(loss.item(), 4)))
            log.info("sft step %d loss %.4f", step, loss.item())
        if progress is not None:
            progress("supervised warm-up", step + 1, recipe.sft_steps)
    model.eval()
    return losses


_BOXED = re.compile(r"\\boxed\{\s*([^{}]*?)\s*\}")


def boxed_exact_match(response: str, answer: str) -> bool:
    """Exact match of the last `\\boxed{...}` after `</think>` (the build's own quick check)."""
    tail = response.rsplit("</think>", 1)[-1]
    found = _BOXED.findall(tail)
    return bool(found) and found[-1].strip() == answer.strip()


@torch.no_grad()
def sample_accuracy(
    model,
    tokenizer,
    problems,
    n: int = 8,
    temperature: float = 1.0,
    max_new_tokens: int = 96,
    seed: int = 0,
    batch_prompts: int = 32,
) -> dict[str, float]:
    """pass@1 (mean accuracy over n samples) and pass@n (any correct) by exact boxed match."""
    from ngrpo.models.tokenizer import encode_prompt
    from ngrpo.rollout import left_pad

    torch.manual_seed(seed)
    per_problem = []
    for start in range(0, len(problems), batch_prompts):
        chunk = problems[start : start + batch_prompts]
        ids, mask = left_pad(
            [encode_prompt(tokenizer, p.problem) for p in chunk], tokenizer.pad_token_id
        )  # (B, P)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            num_return_sequences=n,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        texts = tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
        for i, p in enumerate(chunk):
            per_problem.append([boxed_exact_match(t, p.answer) for t in texts[i * n : (i + 1) * n]])
    return {
        "pass@1": sum(sum(c) / n for c in per_problem) / len(per_problem),
        f"pass@{n}": sum(any(c) for c in per_problem) / len(per_problem),
    }


def build_base_model(out_dir: Path, seed: int, recipe: BaseModelRecipe, progress=None) -> dict:
    """Tokenizer + warm-started model + measured accuracy, saved into `out_dir`."""
    from ngrpo.models.tokenizer import build_tokenizer, save_tokenizer
    from ngrpo.tasks import generate
    from ngrpo.utils.environment import cpu_model, library_versions

    started = time.time()
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    model = make_model(len(tokenizer), tokenizer, recipe)
    train = generate("arith-train", num=recipe.num_train_problems, seed=seed)
    examples = _sft_examples(tokenizer, train, recipe.skip_rate, seed)
    losses = supervised_warmup(model, examples, recipe, seed, progress)
    if progress is not None:
        progress("measuring accuracy", 0, 2)
    accuracy = {}
    for i, split in enumerate(("arith-id", "arith-ood")):
        problems = generate(split, num=recipe.eval_problems, seed=seed)
        accuracy[split] = sample_accuracy(model, tokenizer, problems, seed=seed)
        if progress is not None:
            progress("measuring accuracy", i + 1, 2)
    model.generation_config.do_sample = True
    model.generation_config.top_k = None
    model.save_pretrained(str(out_dir), safe_serialization=True)
    save_tokenizer(tokenizer, out_dir)
    info = {
        "build_version": BUILD_VERSION,
        "seed": seed,
        "recipe": asdict(recipe),
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "sft_loss": losses,
        "accuracy_t1": accuracy,
        "eval_problems": recipe.eval_problems,
        "build_seconds": round(time.time() - started, 1),
        "torch": torch.__version__,
        "libraries": library_versions(),
        "cpu": f"{cpu_model()} ({os.cpu_count()} cores)",
        "built": time.strftime("%Y-%m-%d", time.gmtime()),
        "sha256": sha256_file(out_dir / "model.safetensors"),
    }
    (out_dir / BUILD_INFO).write_text(json.dumps(info, indent=2))  # written last: marks completion
    return info
