"""The one registry of strategies: each strategy module registers its build function here with its table role
and row order.

A leaf module (it imports no strategy), so reporting code can ask a strategy's role without building anything;
importing :mod:`dume_exp.strategies` imports every strategy module, which fills the registry.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
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
    build: Callable[[Any], Iterable[Any]]  # BuildContext -> Candidates (a list, or a generator yielding them lazily)
    role: Role
    order: int  # row order of every table (and build order of a run)
    # its routers have a bias whatever router.bias says (a random init, centroid offsets, trained biases), so no
    # stock MoE class (and no engine serving those, such as vLLM) represents its models
    router_bias: bool = False


STRATEGIES: dict[str, Strategy] = {}  # in row order


def register(name: str, *, order: int, role: Role = Role.RANKED, router_bias: bool = False) -> Callable:
    """Decorator: register ``fn(ctx) -> list[Candidate]`` (or a generator of them) as strategy ``name``."""
    def deco(fn: Callable) -> Callable:
        if name in STRATEGIES:
            raise ValueError(f"strategy {name!r} registered twice")
        entries = [*STRATEGIES.values(), Strategy(name, fn, role, order, router_bias)]
        STRATEGIES.clear()
        STRATEGIES.update((s.name, s) for s in sorted(entries, key=lambda s: s.order))
        return fn
    return deco


def build(name: str, ctx: Any) -> Iterable[Any]:
    """The candidates of strategy ``name`` for the build context ``ctx``. A generator may yield candidates that
    share one model, changed between them: score each before asking for the next."""
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; choose from {sorted(STRATEGIES)}.")
    return STRATEGIES[name].build(ctx)


def role(strategy: str) -> Role:
    return STRATEGIES[strategy].role


def expert_row(domain: str) -> str:
    """The candidate name of the dense expert of ``domain`` (the retention reference of that column)."""
    return f"expert:{domain}"


BASE_ROW = "base"  # the candidate name of strategy base_model


def checkpoint_row(strategy: str, step: int) -> str:
    """The candidate name of ``strategy``'s model after ``step`` router-training steps (``router_training.
    checkpoints``)."""
    return f"{strategy}@{step}"


def checkpoint_of(name: str) -> tuple[str, int] | None:
    """``(strategy, step)`` of a :func:`checkpoint_row` name, else ``None``."""
    strategy, at, step = name.rpartition("@")
    return (strategy, int(step)) if at and strategy and step.isdigit() else None
