"""What every strategy receives (a :class:`BuildContext`) and returns (a list of :class:`Candidate`)."""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ContextManager

import torch
from transformers import PreTrainedModel

from .router_training import RouterTrainingConfig
from ..method.router_statistics import RouterStatistics, collect_statistics
from ..method.statistics_store import StatisticsStore
from ..method.upcycle import upcycle
from ..utils.schema import Choice, at_least, checked, positive_finite

Batch = dict[str, torch.Tensor]


class StatisticsMode(Choice):
    """Router statistics of an ``experts.subset`` run: recollected under the subset's backbone, or selected from
    the full set's."""

    exact = "exact"
    fast = "fast"


@dataclass
class RouterConfig:
    """The routers (the ``router`` group of the app's config)."""

    top_k: int = checked(at_least(1), default=1)
    temperature: float = checked(positive_finite, default=1.0)
    lam: Any = 1.0e-2  # a number ≥ 0, or "auto": per-layer λ by generalised cross-validation
    normalize: bool = True
    max_tokens_per_sequence: int = checked(at_least(1), default=1024)
    bias: bool = True  # False: ridge routers without the constant feature (exportable to stock MoE classes)
    statistics: StatisticsMode = StatisticsMode.exact  # of an experts.subset run (the runner acts on it)


@dataclass
class Cost:
    """Construction cost of a candidate: wall time and tokens processed forward / backward."""

    wall_s: float = 0.0
    forward_tokens: int = 0
    backward_tokens: int = 0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.wall_s + other.wall_s, self.forward_tokens + other.forward_tokens,
                    self.backward_tokens + other.backward_tokens)


@dataclass
class Candidate:
    """A model to score.

    ``route_domain(model, domain)`` is entered while ``domain`` is scored, on the model actually evaluated
    (which may be a bf16 copy of ``model``); ``domain_routing`` names that rule (e.g. ``"oracle"``) and
    enters the evaluation cache key.
    """

    name: str
    model: PreTrainedModel
    cost: Cost = field(default_factory=Cost)
    route_domain: Callable[[Any, str], ContextManager] = lambda model, domain: contextlib.nullcontext()
    domain_routing: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class BuildContext:
    """The experts (expert d serves ``domains[d]``), the data for routers, and the knobs."""

    experts: Sequence[PreTrainedModel]
    domains: Sequence[str]
    calibration_batches: Callable[[], list[list[Batch]]]
    training_batches: Callable[[], list[Batch]]
    router: RouterConfig = field(default_factory=RouterConfig)
    training: RouterTrainingConfig = field(default_factory=RouterTrainingConfig)
    bf16_autocast: bool = False  # statistics forward passes under bf16 autocast (calibration.bf16)
    mask_padding: bool = True  # False: padding positions enter the statistics (the reference implementation)
    seed: int = 0
    progress: bool = True
    stats_store: StatisticsStore | None = None
    base: str | None = None  # the model the experts were fine-tuned from (strategy base_model)
    parent: "BuildContext | None" = None  # fast mode: statistics of this larger expert set, subset-selected
    vocab: str = "align"  # experts whose vocabulary row counts differ: align (merge the shared rows) | strict
    tokenizer: Any = None  # the tokenizer in use: vocabulary alignment refuses to drop rows that are its tokens

    def upcycled(self) -> PreTrainedModel:
        return upcycle(self.experts, top_k=self.router.top_k, temperature=self.router.temperature, seed=self.seed,
                       vocab=self.vocab, tokenizer=self.tokenizer)

    @cached_property
    def statistics(self) -> tuple[RouterStatistics, Cost, dict[str, Any]]:
        """Router statistics under the averaged backbone, once per context (from the store when it has them).

        The cost is that of collecting them (for stored statistics: the original pass's wall time).
        """
        if self.parent is not None:
            stats, cost, report = self.parent.statistics
            return stats.select(list(self.domains)), cost, {**report, "mode": "fast", "from": list(self.parent.domains)}
        batches = self.calibration_batches()
        model, max_tokens = self.upcycled(), self.router.max_tokens_per_sequence
        if self.stats_store is None:
            start = time.perf_counter()
            stats = collect_statistics(model, batches, max_tokens, expert_names=list(self.domains),
                                       progress=self.progress, bf16_autocast=self.bf16_autocast,
                                       mask_padding=self.mask_padding)
            wall = time.perf_counter() - start
            report = {"collected": list(self.domains), "loaded": [], "collect_wall_s": wall, "wall_s": wall}
        else:
            stats, report = self.stats_store.statistics(model, batches, max_tokens, list(self.domains), self.progress,
                                                        self.bf16_autocast, self.mask_padding)
        return stats, Cost(report["wall_s"], int(stats.token_counts.sum()), 0), report


@contextlib.contextmanager
def timed() -> Iterator[Cost]:
    """Measure the wall time of a block into a :class:`Cost`."""
    cost = Cost()
    start = time.perf_counter()
    try:
        yield cost
    finally:
        cost.wall_s = time.perf_counter() - start
