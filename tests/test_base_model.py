"""The embedded base model: the shipped weights (checksums, damage, distance of a rebuild), the
build recipe (deterministic, re-used, learns), save / load, and an imperfect policy."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from ngrpo.models.base_model import (
    BUILD_INFO,
    SHIPPED_DIR,
    SHIPPED_SHA256,
    BaseModelRecipe,
    build_base_model,
    compare_with_shipped,
    ensure_base_model,
    make_model,
    sample_accuracy,
    sha256_file,
    verify_shipped,
)
from ngrpo.models.load import load_model, load_model_and_tokenizer, resolve_model_path
from ngrpo.tasks import generate
from ngrpo.utils.errors import NgrpoError

TINY = BaseModelRecipe(
    hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64,
    sft_steps=4, batch_size=4, warmup_steps=2, num_train_problems=50, eval_problems=4,
)  # fmt: skip


def test_the_shipped_base_is_what_base_means_and_its_checksums_hold(base_model_dir):
    assert base_model_dir == SHIPPED_DIR == resolve_model_path("base")
    assert sha256_file(SHIPPED_DIR / "model.safetensors") == (
        "52ab9910ac213e5abcf2d1abb7f438df3f188e222a725aef74adbc002b47268e"
    )
    shipped = sorted(p.name for p in SHIPPED_DIR.iterdir() if p.name != "__pycache__")
    assert shipped == sorted([*SHIPPED_SHA256, BUILD_INFO])  # every file checked but the record
    info = json.loads((SHIPPED_DIR / BUILD_INFO).read_text())
    assert info["seed"] == 0 and info["recipe"]["sft_steps"] == 800
    assert info["sha256"] == SHIPPED_SHA256["model.safetensors"]
    assert {"torch", "transformers"} <= set(info["libraries"]) and info["cpu"] and info["built"]


def test_a_damaged_shipped_file_stops_with_an_error_naming_it(tmp_path):
    copy = tmp_path / "base"
    shutil.copytree(SHIPPED_DIR, copy)
    verify_shipped(copy)  # an intact copy passes
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit inside the tensor data: the header check cannot see it
    weights.write_bytes(bytes(data))
    with pytest.raises(NgrpoError, match=r"base model file .*model\.safetensors is damaged"):
        verify_shipped(copy)
    shutil.copy(SHIPPED_DIR / "model.safetensors", weights)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(NgrpoError, match=r"tokenizer\.json cannot be read"):
        verify_shipped(copy)


def test_distance_of_a_build_from_the_shipped_base(tmp_path):
    from safetensors.torch import load_file, save_file

    same = compare_with_shipped(SHIPPED_DIR)
    assert same["identical"] and same["max_abs_diff"] == 0.0
    copy = tmp_path / "rebuilt"
    shutil.copytree(SHIPPED_DIR, copy)
    tensors = load_file(copy / "model.safetensors")
    name = "model.layers.1.mlp.up_proj.weight"
    tensors[name][3, 5] += 0.25
    save_file(tensors, copy / "model.safetensors", metadata={"format": "pt"})
    moved = compare_with_shipped(copy)
    assert not moved["identical"] and moved["largest_in"] == name
    assert moved["max_abs_diff"] == pytest.approx(0.25, abs=1e-6)
    total = sum(t.numel() for t in tensors.values())
    assert moved["mean_abs_diff"] == pytest.approx(0.25 / total, rel=1e-3)
    assert moved["shipped_accuracy_t1"] == moved["accuracy_t1"]  # the copied record


def test_the_recipe_learns_the_task_at_full_size(tmp_path):
    """The build recipe itself, short: the shipped architecture, 40 supervised steps. The loss
    falls from ln(vocabulary) to under half of it, the record names what it was built with, and
    the distance to the shipped weights is measured (same shapes, not identical)."""
    recipe = BaseModelRecipe(
        sft_steps=40, warmup_steps=10, num_train_problems=2000, eval_problems=4
    )
    info = build_base_model(tmp_path, seed=3, recipe=recipe)
    first, last = info["sft_loss"][0][1], info["sft_loss"][-1][1]
    assert first == pytest.approx(math.log(info["vocab_size"]), rel=0.1)
    assert last < 0.5 * first, info["sft_loss"]
    assert info["parameters"] == json.loads((SHIPPED_DIR / BUILD_INFO).read_text())["parameters"]
    assert info["sha256"] == sha256_file(tmp_path / "model.safetensors")
    assert set(info["libraries"]) >= {"torch", "transformers", "tokenizers"}
    distance = compare_with_shipped(tmp_path)
    assert not distance["identical"] and distance["max_abs_diff"] > 0


def test_save_and_load_give_equal_logits(embedded_tokenizer, tmp_path):
    torch.manual_seed(0)
    model = make_model(len(embedded_tokenizer), embedded_tokenizer, TINY).eval()
    model.save_pretrained(tmp_path)
    embedded_tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded, tok = load_model_and_tokenizer(tmp_path)
    assert type(loaded).__name__ == "Qwen2ForCausalLM"
    ids = torch.tensor([tok("Tom has 3 apples . How many", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)


def test_build_is_deterministic_for_a_seed(tmp_path):
    infos = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        infos.append(build_base_model(tmp_path / name, seed=5, recipe=TINY))
    a = load_file(tmp_path / "a" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert infos[0]["sft_loss"] == infos[1]["sft_loss"]
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (
        tmp_path / "b" / "tokenizer.json"
    ).read_bytes()


def test_ensure_reuses_a_complete_build_and_refuses_foreign_directories(tmp_path):
    out = tmp_path / "base"
    built = ensure_base_model(out, seed=1, recipe=TINY)
    stamp = (built / "model.safetensors").stat().st_mtime_ns
    assert ensure_base_model(out, seed=1, recipe=TINY) == built
    assert (built / "model.safetensors").stat().st_mtime_ns == stamp
    assert not list(tmp_path.glob(".base.tmp-*"))  # the temporary build directory is gone
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(NgrpoError, match="no complete base-model build.*--force"):
        ensure_base_model(foreign, recipe=TINY)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(NgrpoError, match="cannot write"):
        ensure_base_model(blocker / "sub" / "base", recipe=TINY)


def test_loading_errors_name_the_problem(tmp_path):
    with pytest.raises(NgrpoError, match="does not exist"):
        load_model(tmp_path / "missing")
    with pytest.raises(NgrpoError, match="no config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(NgrpoError, match="no model weights"):
        load_model(tmp_path)


def test_base_policy_is_right_sometimes_not_always(base_model_dir):
    """The RL starting point: pass@1 in [0.15, 0.60], pass@8 >= 1.5 x pass@1, 0.02 < OOD < ID."""
    info = json.loads((base_model_dir / BUILD_INFO).read_text())
    assert info["parameters"] > 100_000 and info["vocab_size"] >= 120
    model, tok = load_model_and_tokenizer(base_model_dir)
    # fresh problems and a different sampling seed than the build's own measurement
    id_acc = sample_accuracy(model, tok, generate("arith-id", 100, seed=7), seed=7)
    ood_acc = sample_accuracy(model, tok, generate("arith-ood", 100, seed=7), seed=7)
    assert 0.15 <= id_acc["pass@1"] <= 0.60, id_acc
    assert id_acc["pass@8"] >= 1.5 * id_acc["pass@1"], id_acc
    assert 0.02 < ood_acc["pass@1"] < id_acc["pass@1"], (id_acc, ood_acc)


def test_base_model_embeds_surface_variants_as_nearest_neighbours(base_model_dir):
    """What N-GRPO's neighbours are on this testbed: `7`'s nearest token is `seven`, and so on."""
    from ngrpo.method.neighbors import bruteforce_neighbors
    from ngrpo.tasks.arith import surface_variants

    model, tok = load_model_and_tokenizer(base_model_dir)
    vocab = tok.get_vocab()
    words = [w for w in vocab if len(surface_variants(w)) > 1]
    ids = torch.tensor([vocab[w] for w in words])
    nearest = bruteforce_neighbors(model.get_input_embeddings().weight, ids, 1, "cosine")[0][:, 0]
    inverse = {i: w for w, i in vocab.items()}
    hits = [inverse[int(n)] in surface_variants(w) for w, n in zip(words, nearest, strict=True)]
    assert sum(hits) >= 0.9 * len(words), sum(hits)
