"""Controls over a model's MoE blocks: forcing an expert, dispatch mode, top-k / temperature, routing counts."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..native.moe_block import DISPATCH_MODES, MoEBlock

__all__ = ["DISPATCH_MODES", "MoEBlock", "dispatch_mode", "force_expert", "moe_blocks", "require_moe_blocks",
           "reset_routing_counts", "routing_counts", "set_routing"]


def moe_blocks(model: nn.Module) -> list[MoEBlock]:
    """The model's MoE blocks in layer order (empty for a dense model). Blocks of a model loaded as remote code
    (``trust_remote_code=True``) are another copy of the class, so they are recognised by name too."""
    return [m for m in model.modules()
            if isinstance(m, MoEBlock) or (type(m).__name__ == MoEBlock.__name__ and hasattr(m, "router"))]


def require_moe_blocks(model: nn.Module) -> list[MoEBlock]:
    blocks = moe_blocks(model)
    if not blocks:
        raise ValueError("The model has no MoE blocks; build one with dume_exp.upcycle(experts) first.")
    return blocks


@contextlib.contextmanager
def _set_on_blocks(blocks: list[MoEBlock], attr: str, value: object) -> Iterator[None]:
    """Set ``attr`` on every block for the duration of the context, then restore each block's own value."""
    previous = [getattr(b, attr) for b in blocks]
    for b in blocks:
        setattr(b, attr, value)
    try:
        yield
    finally:
        for b, p in zip(blocks, previous):
            setattr(b, attr, p)


@contextlib.contextmanager
def force_expert(model: nn.Module, expert: int) -> Iterator[nn.Module]:
    """Inside the context, every MoE block of ``model`` sends every token to ``expert``."""
    blocks = require_moe_blocks(model)
    num = blocks[0].num_experts
    if not 0 <= expert < num:
        raise ValueError(f"expert index {expert} out of range: the model has {num} experts (0..{num - 1}).")
    with _set_on_blocks(blocks, "forced_expert", expert):
        yield model


@contextlib.contextmanager
def dispatch_mode(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """Temporarily switch every MoE block to ``"sparse"`` or ``"dense"`` dispatch."""
    if mode not in DISPATCH_MODES:
        raise ValueError(f"dispatch mode must be one of {DISPATCH_MODES}; got {mode!r}.")
    with _set_on_blocks(require_moe_blocks(model), "dispatch", mode):
        yield model


def set_routing(model: nn.Module, top_k: int | None = None, temperature: float | None = None) -> None:
    """Change top-k and/or the router temperature of every MoE block."""
    for b in require_moe_blocks(model):
        if top_k is not None:
            b.top_k = top_k
        if temperature is not None:
            b.temperature = temperature


def routing_counts(model: nn.Module) -> torch.Tensor:
    """Token slots routed to each expert since the last reset, as a ``[layers, experts]`` tensor."""
    return torch.stack([b.routing_counts.detach().cpu() for b in require_moe_blocks(model)])


def reset_routing_counts(model: nn.Module) -> None:
    for b in require_moe_blocks(model):
        b.routing_counts.zero_()
