"""One registry of strategies: ``STRATEGIES[name](ctx) -> list[Candidate]``.

Each strategy lives in its own small module and registers itself with :func:`register`.
"""
from __future__ import annotations

from collections.abc import Callable

from .base import BuildContext, Candidate, Cost, RouterConfig

StrategyFn = Callable[[BuildContext], list[Candidate]]
STRATEGIES: dict[str, StrategyFn] = {}


def register(name: str) -> Callable[[StrategyFn], StrategyFn]:
    def deco(fn: StrategyFn) -> StrategyFn:
        if name in STRATEGIES:
            raise ValueError(f"strategy {name!r} registered twice")
        STRATEGIES[name] = fn
        return fn
    return deco


def build(name: str, ctx: BuildContext) -> list[Candidate]:
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; choose from {sorted(STRATEGIES)}.")
    return STRATEGIES[name](ctx)


# Import order is registration order, which is the row order of every table.
from . import dense_expert, base_model, weight_average, oracle, random_routing, dume, btx, dume_plus  # noqa: E402,F401,I001

__all__ = ["STRATEGIES", "BuildContext", "Candidate", "Cost", "RouterConfig", "build", "register"]
