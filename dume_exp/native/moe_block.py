"""The MoE block that replaces each dense MLP: a linear router, top-k gating and sparse dispatch.

Standalone (torch only): it is copied next to a saved DUME model as part of its modeling code.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

DISPATCH_MODES = ("sparse", "dense")


class _RowGather(torch.autograd.Function):
    """``x.index_select(0, index)`` whose backward is also a gather, not autograd's scatter-add.

    ``back`` is the inverse map: ``grad_x = grad.index_select(0, back)`` summed over groups of ``fold``
    consecutive rows (``fold = k`` when every row of ``x`` was picked ``k`` times). On CPU autograd's
    ``index_add_`` made router training ~2x slower than the dense model's full fine-tune.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor, back: torch.Tensor, fold: int) -> torch.Tensor:
        ctx.save_for_backward(back)
        ctx.fold = fold
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (back,) = ctx.saved_tensors
        out = grad.index_select(0, back)
        if ctx.fold > 1:
            out = out.view(-1, ctx.fold, out.shape[-1]).sum(dim=1)
        return out, None, None, None


class MoEBlock(nn.Module):
    """Mixture of the domain experts' MLPs for one decoder layer.

    ``logits = router(x) / temperature``; the ``top_k`` largest are kept, softmaxed among
    themselves, and the output is the weighted sum of the kept experts' outputs.

    ``dispatch="sparse"`` (default) runs every expert only on the tokens routed to it;
    ``dispatch="dense"`` runs every expert on every token and zero-weights the rest (the
    reference implementation's algorithm, kept as a test oracle and benchmark baseline).
    ``forced_expert`` (set through :func:`force_expert`) sends every token to one expert.
    ``routing_counts[d]`` accumulates how many token slots went to expert ``d`` since the
    last :func:`reset_routing_counts`.
    """

    def __init__(
        self,
        experts: Sequence[nn.Module],
        hidden_size: int,
        top_k: int = 1,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if len(experts) < 1:
            raise ValueError("MoEBlock needs at least one expert.")
        self.experts = nn.ModuleList(experts)
        self.router = nn.Linear(hidden_size, len(experts), bias=True)
        self.top_k = top_k
        self.temperature = temperature
        self.dispatch = "sparse"
        self.forced_expert: int | None = None
        self.register_buffer(
            "routing_counts", torch.zeros(len(experts), dtype=torch.long), persistent=False
        )

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    @property
    def top_k(self) -> int:
        return self._top_k

    @top_k.setter
    def top_k(self, k: int) -> None:
        if not 1 <= int(k) <= len(self.experts):
            raise ValueError(f"top_k must be in [1, {len(self.experts)}] (the number of experts); got {k}.")
        self._top_k = int(k)

    @property
    def temperature(self) -> float:
        return self._temperature

    @temperature.setter
    def temperature(self, t: float) -> None:
        if not (math.isfinite(t) and t > 0):
            raise ValueError(f"temperature must be a positive finite number; got {t}.")
        self._temperature = float(t)

    def gate(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k expert indices ``[N, k]`` and their softmax weights ``[N, k]`` for tokens ``[N, H]``."""
        logits = self.router(flat) / self.temperature
        top_logits, top_idx = logits.topk(self.top_k, dim=-1)
        if self.top_k == 1 and logits.requires_grad:
            # The kept score's softmax is exactly 1 and has no gradient. Straight-through estimator for
            # router training: the value stays exactly 1, the gradient is that of log p(top | x).
            p_top = torch.softmax(logits, dim=-1, dtype=torch.float32).gather(1, top_idx)
            return top_idx, (p_top / p_top.detach()).to(flat.dtype)
        weights = torch.softmax(top_logits, dim=-1, dtype=torch.float32).to(flat.dtype)
        return top_idx, weights

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        flat = hidden_states.reshape(-1, shape[-1])
        if self.forced_expert is not None:
            self.routing_counts[self.forced_expert] += flat.shape[0]
            return self.experts[self.forced_expert](flat).reshape(shape)
        top_idx, weights = self.gate(flat)
        with torch.no_grad():
            self.routing_counts += torch.bincount(top_idx.reshape(-1), minlength=self.num_experts)
        if self.dispatch == "sparse":
            out = self._sparse(flat, top_idx, weights)
        elif self.dispatch == "dense":
            out = self._dense(flat, top_idx, weights)
        else:
            raise ValueError(f"dispatch must be one of {DISPATCH_MODES}; got {self.dispatch!r}.")
        return out.reshape(shape)

    def _sparse(self, flat: torch.Tensor, top_idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Group the (token, slot) pairs by expert and run each expert once on its own tokens."""
        k = self.top_k
        slot_expert = top_idx.reshape(-1)  # slot s = token s // k, choice s % k
        order = torch.argsort(slot_expert, stable=True)
        counts = torch.bincount(slot_expert, minlength=self.num_experts).tolist()
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        grouped = _RowGather.apply(flat, order // k, inverse, k)  # tokens grouped by expert
        outs = [self.experts[d](chunk) for d, chunk in enumerate(grouped.split(counts)) if chunk.shape[0]]
        slots = _RowGather.apply(torch.cat(outs), inverse, order, 1)  # back to slot order (gathers only)
        if k == 1:
            return slots * weights if weights.requires_grad else slots
        return (slots.view(-1, k, flat.shape[-1]) * weights[..., None]).sum(dim=1)

    def _dense(self, flat: torch.Tensor, top_idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Every expert on every token, combined with a dense [N, D] weight matrix."""
        dense_w = torch.zeros(flat.shape[0], self.num_experts, dtype=flat.dtype, device=flat.device)
        dense_w.scatter_(1, top_idx, weights)
        outs = torch.stack([expert(flat) for expert in self.experts], dim=1)  # [N, D, H]
        return (outs * dense_w[..., None]).sum(dim=1)
