"""Closed-form ridge routers: W̃_l = (A_l + λI)⁻¹ b_l with A_l = Σ_d G_{l,d} and b_l[:, d] = s_{l,d}.

One eigendecomposition of every A_l serves every λ (a sweep costs one matrix product per λ). Without a bias
(``bias=False``) the constant feature is dropped: the same statistics without their last row and column.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..utils.integrity import NonFiniteError, nonfinite_routers, nonfinite_statistics
from .moe import require_moe_blocks
from ..native import annotate
from .router_statistics import RouterStatistics


@dataclass
class RouterWeights:
    """Per-layer router parameters: ``weight[l]`` is ``[D, H]`` (``nn.Linear`` layout), ``bias[l]`` is ``[D]``."""

    weight: torch.Tensor
    bias: torch.Tensor


class RidgeSolver:
    """Factorises every layer's A once; :meth:`solve` then gives the routers for any λ (``bias=False``: routers
    without the constant feature, their bias zero)."""

    def __init__(self, stats: RouterStatistics, bias: bool = True) -> None:
        problem = nonfinite_statistics(stats.gram, stats.sums, stats.expert_names)
        if problem:
            raise NonFiniteError(f"Cannot fit routers to non-finite statistics: {problem}. Collect them again "
                                 "(collect_statistics checks the forward pass; RouterStatistics.load checks files).")
        self.stats, self.bias = stats, bias
        keep = slice(None) if bias else slice(0, stats.hidden_size)
        A = stats.gram[:, :, keep, keep].sum(dim=1)  # [L, F, F], F = H+1 (or H without the bias)
        A = 0.5 * (A + A.transpose(-1, -2))
        self.eigenvalues, self.eigenvectors = torch.linalg.eigh(A)
        self.projected_targets = self.eigenvectors.transpose(-1, -2) @ stats.sums[:, :, keep].transpose(1, 2)  # Qᵀb

    def _per_layer(self, lam: float | torch.Tensor) -> torch.Tensor:
        """λ as a ``[L, 1]`` float64 column (one value for all layers, or one per layer)."""
        lam_t = torch.as_tensor(lam, dtype=torch.float64).reshape(-1)
        if lam_t.numel() not in (1, self.eigenvalues.shape[0]) or not torch.isfinite(lam_t).all() or (lam_t < 0).any():
            raise ValueError(f"The ridge penalty λ must be a finite number ≥ 0 (or one per layer); got {lam}.")
        return lam_t.expand(self.eigenvalues.shape[0]).reshape(-1, 1)

    def coefficients(self, lam: float | torch.Tensor) -> torch.Tensor:
        """W̃ = (A + λI)⁻¹ b for every layer, ``[L, H+1, D]`` float64 (bias row last; ``[L, H, D]`` without)."""
        shifted = self.eigenvalues + self._per_layer(lam)
        tol = self.eigenvalues.abs().amax(dim=-1, keepdim=True) * shifted.shape[-1] * torch.finfo(shifted.dtype).eps
        bad = (shifted <= tol).any(dim=-1)
        if bad.any():
            layer = int(bad.nonzero()[0])
            raise ValueError(
                f"A + λI is singular at layer {layer} (smallest eigenvalue {float(shifted[layer].min()):.3e} "
                f"with λ={float(self._per_layer(lam)[layer])}): the calibration hidden states do not span the feature space. "
                "Use λ > 0 (the paper uses 1e-2) or collect more calibration tokens."
            )
        return self.eigenvectors @ (self.projected_targets / shifted[..., None])

    def gcv(self, lams: torch.Tensor) -> torch.Tensor:
        """Generalised cross-validation score ``[L, len(lams)]`` of each layer's ridge fit to the one-hot targets.

        GCV(λ) = N·RSS(λ) / (N − tr H(λ))², all from the statistics: with c = Qᵀb and σ the eigenvalues
        of A, RSS = N − 2 Σᵢ‖cᵢ‖²/(σᵢ+λ) + Σᵢ σᵢ‖cᵢ‖²/(σᵢ+λ)² and tr H = Σᵢ σᵢ/(σᵢ+λ).
        """
        lams = torch.as_tensor(lams, dtype=torch.float64).reshape(1, -1, 1)  # [1, K, 1]
        sigma = self.eigenvalues.clamp_min(0)[:, None, :]  # [L, 1, H+1]
        c2 = (self.projected_targets ** 2).sum(-1)[:, None, :]  # [L, 1, H+1]
        n = self.stats.token_counts.sum().double()
        rss = n - 2 * (c2 / (sigma + lams)).sum(-1) + (sigma * c2 / (sigma + lams) ** 2).sum(-1)
        dof = (sigma / (sigma + lams)).sum(-1)
        return n * rss / (n - dof) ** 2

    def select_lambda(self, grid: torch.Tensor | None = None) -> torch.Tensor:
        """Per-layer λ minimising GCV over ``grid`` (default: 10⁻⁶ … 10⁶, 49 log-spaced values)."""
        grid = torch.logspace(-6, 6, 49, dtype=torch.float64) if grid is None else torch.as_tensor(grid, dtype=torch.float64)
        return grid[self.gcv(grid).argmin(dim=1)]

    def solve(self, lam: float | torch.Tensor = 1e-2, normalize: bool = True) -> RouterWeights:
        """Router weights for penalty ``lam``; ``normalize`` divides each expert's weight column and bias
        by the L2 norm of that weight column (the paper's convention)."""
        coef = self.coefficients(lam)
        if self.bias:
            weight, bias = coef[:, :-1, :], coef[:, -1, :]  # [L, H, D], [L, D]
        else:
            weight, bias = coef, coef.new_zeros(coef.shape[0], coef.shape[2])
        if normalize:
            norm = weight.norm(dim=1).clamp_min(torch.finfo(weight.dtype).tiny)  # [L, D]
            weight, bias = weight / norm[:, None, :], bias / norm
        weights = RouterWeights(weight.transpose(1, 2).contiguous(), bias.contiguous())
        problem = nonfinite_routers(weights.weight, weights.bias, self.stats.expert_names)
        if problem:
            raise NonFiniteError(f"The ridge solve at λ={lam} gave non-finite routers: {problem}. A + λI is too "
                                 "ill-conditioned for float64 at this λ: use a larger λ (the paper uses 1e-2).")
        return weights


def apply_router_weights(model: nn.Module, weights: RouterWeights) -> None:
    """Copy per-layer router weights into the model's MoE blocks."""
    blocks = require_moe_blocks(model)
    L, D, H = weights.weight.shape
    router = blocks[0].router
    if (len(blocks), router.out_features, router.in_features) != (L, D, H):
        raise ValueError(
            f"Router weights for {L} layers × {D} experts × hidden {H} do not fit the model "
            f"({len(blocks)} layers × {router.out_features} experts × hidden {router.in_features}); "
            "select the statistics of the model's experts (RouterStatistics.select)."
        )
    with torch.no_grad():
        for block, w, b in zip(blocks, weights.weight, weights.bias):
            block.router.weight.copy_(w.to(block.router.weight))
            block.router.bias.copy_(b.to(block.router.bias))


def fit_routers(
    model: nn.Module,
    stats: RouterStatistics | RidgeSolver,
    lam: float = 1e-2,
    normalize: bool = True,
    bias: bool | None = None,
) -> RouterWeights:
    """Fit every router of ``model`` in closed form and return the weights (``bias=False``: without the constant
    feature; default: with it, or as the solver was built).

    Pass a :class:`RidgeSolver` instead of statistics to reuse its factorisation across λ values.
    """
    if isinstance(stats, RidgeSolver):
        solver = stats
        if bias is not None and bias != solver.bias:
            raise ValueError(f"fit_routers(bias={bias}) with a RidgeSolver built with bias={solver.bias}; build the "
                             f"solver as RidgeSolver(stats, bias={bias}).")
    else:
        solver = RidgeSolver(stats, bias=True if bias is None else bias)
    weights = solver.solve(lam, normalize)
    apply_router_weights(model, weights)
    lam_record = lam.tolist() if isinstance(lam, torch.Tensor) else lam
    annotate(model, router={"method": "ridge", "lam": lam_record, "normalize": normalize, "bias": solver.bias},
             domains=list(solver.stats.expert_names),
             calibration_tokens=[int(n) for n in solver.stats.token_counts.tolist()])
    return weights
