"""Shared fixtures: offline environment, tiny random model factories and a tiny byte-level tokenizer."""
from __future__ import annotations

import copy
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ["DUME_CACHE"] = tempfile.mkdtemp(prefix="dume_test_cache_")  # never the user's cache

import pytest
import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

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


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE tokenizer (vocab ≤ 300) trained in memory, no hub access."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = ["The quick brown fox jumps over the lazy dog. " * 4, "def f(x):\n    return x + 1\n" * 4]
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(text, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
