"""Finiteness checks and tensor checksums.

One NaN in an expert's weights or in stored statistics makes every ridge router NaN without an error (routing then
silently sends every token to expert 0), so weights are checked where they enter (:func:`check_finite_parameters`),
statistics where they are collected and loaded (:func:`nonfinite_statistics`) and routers where they are solved
(:func:`nonfinite_routers`); each names the expert, the layer and what to do. Each check is one sum per
tensor (:func:`all_finite`); the location is only worked out once something is wrong.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class NonFiniteError(ValueError):
    """NaN or inf in weights, router statistics or routers."""


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether every entry of ``tensor`` is finite. A NaN or inf entry makes the sum non-finite, so a finite sum
    (one reduction, no mask) proves it; only a non-finite sum (that, or an overflow) needs the element-wise test."""
    tensor = tensor.detach()
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def nonfinite_count(tensor: torch.Tensor) -> int:
    """How many entries of ``tensor`` are NaN or ±inf."""
    return 0 if all_finite(tensor) else int((~torch.isfinite(tensor.detach())).sum())


def check_finite_parameters(model: nn.Module, expert: str) -> None:
    """Raise :class:`NonFiniteError` naming ``expert`` and the first parameter holding NaN or inf."""
    for name, param in model.named_parameters():
        count = nonfinite_count(param)
        if count:
            raise NonFiniteError(
                f"{expert}: parameter {name} has {count} non-finite values (NaN/inf) among {param.numel()}. Its "
                "checkpoint is corrupt or its training diverged: re-download or retrain this expert, or leave it out.")


def _first_nonfinite(per_layer_expert: torch.Tensor) -> tuple[int, int, int] | None:
    """``(layer, expert, count)`` of the first ``[layer, expert]`` slice of a ``[L, D, ...]`` tensor holding NaN or
    inf, or None when all are finite."""
    if all_finite(per_layer_expert):
        return None
    bad = ~torch.isfinite(per_layer_expert.reshape(*per_layer_expert.shape[:2], -1))
    layer, expert = bad.any(-1).nonzero()[0].tolist()
    return layer, expert, int(bad[layer, expert].sum())


def _describe(what: str, found: tuple[int, int, int] | None, names: Sequence[str]) -> str | None:
    if found is None:
        return None
    layer, expert, count = found
    return f"{what} of expert {names[expert]!r} at layer {layer} hold {count} non-finite values (NaN/inf)"


def nonfinite_statistics(gram: torch.Tensor, sums: torch.Tensor, names: Sequence[str]) -> str | None:
    """Where router statistics (``[L, D, H+1, H+1]`` Gram matrices, ``[L, D, H+1]`` sums of experts ``names``)
    first hold NaN or inf, or None when they are finite."""
    return (_describe("the Gram matrices", _first_nonfinite(gram), names)
            or _describe("the feature sums", _first_nonfinite(sums), names))


def nonfinite_routers(weight: torch.Tensor, bias: torch.Tensor, names: Sequence[str]) -> str | None:
    """Where router weights ``[L, D, H]`` and biases ``[L, D]`` (experts ``names``) first hold NaN or inf."""
    return _describe("the router weights", _first_nonfinite(torch.cat([weight, bias[..., None]], -1)), names)
