"""Exact export to stock MoE classes: the stock class loads the exported folder and computes the DUME model's logits."""
import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, MixtralForCausalLM, Qwen2MoeForCausalLM

from dume_exp import RidgeSolver, collect_statistics, fit_routers, moe_blocks, upcycle
from dume_exp.cli.export import main as export_main
from dume_exp.export import ExportError, export_moe, to_stock_moe
from tests.helpers import make_experts, random_batches

LLAMA3 = dict(head_dim=16, tie_word_embeddings=True,  # head_dim != hidden 32 / 4 heads
              rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
TOLERANCE = {1: 1e-6, 2: 1e-5, 3: 1e-5}  # max |logit difference| by top-k


def dume_model(family: str, top_k: int, bias: bool = False, **overrides):
    experts = make_experts(3, family=family, shared_backbone=False, **overrides)
    model = upcycle(experts, top_k=top_k, temperature=0.7)
    stats = collect_statistics(model, [random_batches(2, 2, 12, seed=d) for d in range(3)], progress=False)
    fit_routers(model, RidgeSolver(stats, bias=bias), lam=1e-2)
    return model


def max_logit_difference(a, b) -> float:
    ids = random_batches(1, 3, 20, seed=7)[0]
    with torch.no_grad():
        return (a(**ids).logits - b(**ids).logits).abs().max().item()


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_llama_experts_export_to_mixtral_exactly(tmp_path, top_k):
    model = dume_model("llama", top_k, **LLAMA3)
    assert len({b.top_k for b in moe_blocks(model)}) == 1 and moe_blocks(model)[0].temperature == 0.7
    export_moe(model, tmp_path / "mixtral", arch="mixtral")
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "mixtral")
    assert type(stock) is MixtralForCausalLM and stock.config.head_dim == 16
    assert stock.config.rope_parameters["rope_type"] == "llama3" and stock.config.tie_word_embeddings
    assert stock.lm_head.weight.data_ptr() == stock.model.embed_tokens.weight.data_ptr()
    assert max_logit_difference(model, stock) <= TOLERANCE[top_k]
    assert max_logit_difference(model, to_stock_moe(model)) <= TOLERANCE[top_k]  # in memory, without a save
    with safe_open(str(tmp_path / "mixtral" / "model.safetensors"), "pt") as f:  # the names vLLM and llama.cpp read
        keys = set(f.keys())
    expected = {f"model.layers.{i}.block_sparse_moe.{name}" for i in range(2)
                for name in ["gate.weight", *(f"experts.{e}.{w}.weight" for e in range(3) for w in ("w1", "w2", "w3"))]}
    assert expected <= keys and not any(".mlp." in k for k in keys)
    assert "mixture of 3 experts" in (tmp_path / "mixtral" / "README.md").read_text()


@pytest.mark.parametrize("top_k", [1, 2])
def test_qwen2_experts_export_to_qwen2_moe_exactly_in_shards(tmp_path, top_k):
    model = dume_model("qwen2", top_k)
    export_moe(model, tmp_path / "qwen", arch="qwen2_moe", max_shard_size="40KB")
    index = json.loads((tmp_path / "qwen" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert "model.layers.1.mlp.experts.2.gate_proj.weight" in index["weight_map"]
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "qwen")
    assert type(stock) is Qwen2MoeForCausalLM and stock.config.shared_expert_intermediate_size == 0
    assert max_logit_difference(model, stock) <= TOLERANCE[top_k]


def test_what_the_stock_classes_cannot_represent_is_refused(tmp_path):
    with pytest.raises(ExportError, match=r"router\.bias=false.*RidgeSolver\(stats, bias=False\).*native DUME format"):
        export_moe(dume_model("llama", 1, bias=True), tmp_path / "a")
    with pytest.raises(ExportError, match="use --arch qwen2_moe"):
        export_moe(dume_model("qwen2", 1), tmp_path / "b", arch="mixtral")
    with pytest.raises(ExportError, match="attention_bias"):
        export_moe(dume_model("llama", 1, attention_bias=True), tmp_path / "c")
    uneven = dume_model("llama", 1)
    moe_blocks(uneven)[1].top_k = 2
    with pytest.raises(ExportError, match=r"different numbers of experts \[1, 2\]"):
        export_moe(uneven, tmp_path / "d")
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_the_command_line_exports_a_saved_folder_with_its_tokenizer(tmp_path, tiny_tokenizer):
    model = dume_model("llama", 2, vocab_size=len(tiny_tokenizer))
    model.save_pretrained(tmp_path / "dume", tokenizer=tiny_tokenizer)
    export_main([str(tmp_path / "dume"), str(tmp_path / "out"), "--arch", "mixtral"])
    assert (tmp_path / "out" / "tokenizer.json").exists()
    assert max_logit_difference(model, AutoModelForCausalLM.from_pretrained(tmp_path / "out")) <= TOLERANCE[2]
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match="is not a model folder"):
        export_main([str(tmp_path / "dume"), str(tmp_path / "file")])
