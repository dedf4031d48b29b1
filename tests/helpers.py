"""Test helpers: tiny random models of each supported family, experts made from them, random token batches."""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

REPO = Path(__file__).resolve().parents[1]

FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
}


def tiny_model(family: str = "llama", seed: int = 0, **overrides) -> torch.nn.Module:
    """A randomly initialised fp32 causal LM with 2 layers and hidden size 32."""
    config_cls, model_cls = FAMILIES[family]
    kwargs = dict(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = model_cls(config_cls(**kwargs))
    return model.float().eval()


def perturbed(model: torch.nn.Module, seed: int, scale: float = 0.05, mlp_only: bool = True) -> torch.nn.Module:
    """A copy of ``model`` with Gaussian noise added to its MLPs (or to every parameter)."""
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in out.named_parameters():
            if mlp_only and ".mlp." not in name:
                continue
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return out


def make_experts(n: int, family: str = "llama", shared_backbone: bool = True, seed: int = 0, **overrides) -> list:
    base = tiny_model(family, seed=seed, **overrides)
    return [perturbed(base, seed=seed + 100 + d, mlp_only=shared_backbone) for d in range(n)]


def random_batches(n_batches: int, batch_size: int, seq_len: int, vocab: int = 300, seed: int = 0, low: int = 3):
    gen = torch.Generator().manual_seed(seed)
    return [
        {"input_ids": torch.randint(low, vocab, (batch_size, seq_len), generator=gen),
         "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long)}
        for _ in range(n_batches)
    ]
