"""The one registry of strategies: each strategy module registers its build function here with its table role
and row order.

A leaf module (it imports no strategy), so reporting code can ask a strategy's role without building anything;
importing :mod:`dume_exp.strategies` imports every strategy module, which fills the registry.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any


class Role(str, Enum):
    """How the tables treat a strategy's rows."""

    REFERENCE = "reference"  # a reference point, not ranked: each dense expert (retention = 100), the base model
    UPPER_BOUND = "upper_bound"  # not ranked: oracle routing knows each token's domain
    RANKED = "ranked"  # a merged model; the best one of each column is marked


@dataclass(frozen=True)
class Strategy:
    name: str
    build: Callable[[Any], list[Any]]  # BuildContext -> list[Candidate]
    role: Role
    order: int  # row order of every table (and build order of a run)


STRATEGIES: dict[str, Strategy] = {}  # in row order


def register(name: str, *, order: int, role: Role = Role.RANKED) -> Callable:
    """Decorator: register ``fn(ctx) -> list[Candidate]`` as strategy ``name``."""
    def deco(fn: Callable) -> Callable:
        if name in STRATEGIES:
            raise ValueError(f"strategy {name!r} registered twice")
        entries = [*STRATEGIES.values(), Strategy(name, fn, role, order)]
        STRATEGIES.clear()
        STRATEGIES.update((s.name, s) for s in sorted(entries, key=lambda s: s.order))
        return fn
    return deco


def build(name: str, ctx: Any) -> list[Any]:
    """The candidates of strategy ``name`` for the build context ``ctx``."""
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; choose from {sorted(STRATEGIES)}.")
    return STRATEGIES[name].build(ctx)


def role(strategy: str) -> Role:
    return STRATEGIES[strategy].role


def expert_row(domain: str) -> str:
    """The candidate name of the dense expert of ``domain`` (the retention reference of that column)."""
    return f"expert:{domain}"


BASE_ROW = "base"  # the candidate name of strategy base_model
