"""The stock transformers MoE classes a DUME model converts to exactly, one class per output architecture.

A DUME layer computes ``softmax(topk(router(x) / T))``-weighted sums of its experts' MLPs. Mixtral and Qwen2-MoE
compute ``topk(softmax(gate(x)))`` renormalised over the kept experts, which is the same function when
``gate = router.weight / T`` and the router has no bias (neither class has one).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import MixtralConfig, MixtralForCausalLM, PretrainedConfig, Qwen2MoeConfig, Qwen2MoeForCausalLM

# Keys of a dense configuration that describe the DUME model or the file, not the decoder.
_NOT_DECODER = ("dume_moe", "dume_provenance", "model_type", "architectures", "auto_map", "transformers_version",
                "stock_model_type")


class ExportError(ValueError):
    """The DUME model cannot be represented exactly by the requested stock class."""


def _decoder_fields(config: PretrainedConfig) -> dict[str, Any]:
    return {k: v for k, v in config.to_dict().items() if k not in _NOT_DECODER}


def _experts_tensors(block: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``gate_up_proj`` ``[E, 2I, H]`` (gate rows first) and ``down_proj`` ``[E, H, I]`` of a DUME block's experts."""
    gate_up = torch.stack([torch.cat([e.gate_proj.weight, e.up_proj.weight], 0) for e in block.experts])
    down = torch.stack([e.down_proj.weight for e in block.experts])
    return gate_up, down


class StockMoE(ABC):
    """One output architecture: which dense families it takes, its configuration and its MoE tensors."""

    name: str
    sources: tuple[str, ...]  # stock model types of the experts it represents
    model_class: type

    def check(self, config: PretrainedConfig) -> None:
        """Raise :class:`ExportError` for a decoder feature the class lacks."""

    @abstractmethod
    def config(self, dense: PretrainedConfig, num_experts: int, top_k: int) -> PretrainedConfig:
        """The stock configuration: the experts' decoder settings plus the MoE layout."""

    @abstractmethod
    def moe_tensors(self, block: nn.Module) -> dict[str, torch.Tensor]:
        """The tensors of one layer's MoE block, keyed by their name under ``model.layers.<i>.mlp.``."""


class Mixtral(StockMoE):
    """Llama or Mistral experts as ``MixtralForCausalLM`` (read by vLLM and llama.cpp's converter)."""

    name, sources, model_class = "mixtral", ("llama", "mistral"), MixtralForCausalLM

    def check(self, config: PretrainedConfig) -> None:
        biased = [k for k in ("attention_bias", "mlp_bias") if getattr(config, k, False)]
        if biased:
            raise ExportError(f"Mixtral has no attention or MLP biases, but the experts use {biased}; keep the native "
                              "DUME format.")
        if getattr(config, "hidden_act", "silu") != "silu":
            raise ExportError(f"Mixtral experts use SiLU; these experts use {config.hidden_act!r}.")

    def config(self, dense: PretrainedConfig, num_experts: int, top_k: int) -> PretrainedConfig:
        fields = {k: v for k, v in _decoder_fields(dense).items() if k not in ("attention_bias", "mlp_bias")}
        return MixtralConfig(**{**fields, "num_local_experts": num_experts, "num_experts_per_tok": top_k,
                                "router_jitter_noise": 0.0, "output_router_logits": False})

    def moe_tensors(self, block: nn.Module) -> dict[str, torch.Tensor]:
        gate_up, down = _experts_tensors(block)
        return {"gate.weight": block.router.weight / block.temperature, "experts.gate_up_proj": gate_up,
                "experts.down_proj": down}


class Qwen2Moe(StockMoE):
    """Qwen2 experts as ``Qwen2MoeForCausalLM`` with a shared expert of size 0 and renormalised top-k weights."""

    name, sources, model_class = "qwen2_moe", ("qwen2",), Qwen2MoeForCausalLM

    def config(self, dense: PretrainedConfig, num_experts: int, top_k: int) -> PretrainedConfig:
        return Qwen2MoeConfig(**{**_decoder_fields(dense), "num_experts": num_experts, "num_experts_per_tok": top_k,
                                 "moe_intermediate_size": dense.intermediate_size, "shared_expert_intermediate_size": 0,
                                 "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [],
                                 "qkv_bias": True, "output_router_logits": False})

    def moe_tensors(self, block: nn.Module) -> dict[str, torch.Tensor]:
        gate_up, down = _experts_tensors(block)
        hidden, dtype = gate_up.shape[-1], gate_up.dtype
        empty = {"gate_proj": (0, hidden), "up_proj": (0, hidden), "down_proj": (hidden, 0)}
        return {"gate.weight": block.router.weight / block.temperature, "experts.gate_up_proj": gate_up,
                "experts.down_proj": down, "shared_expert_gate.weight": torch.zeros(1, hidden, dtype=dtype),
                **{f"shared_expert.{k}.weight": torch.zeros(shape, dtype=dtype) for k, shape in empty.items()}}


ARCHITECTURES: Mapping[str, StockMoE] = {a.name: a for a in (Mixtral(), Qwen2Moe())}
