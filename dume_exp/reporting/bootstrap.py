"""Paired bootstrap confidence intervals for the retention tables, from the per-item outcomes in a run's results.

One resample draws, per task, the same items (with replacement) for every candidate and every seed; each
candidate's task score is recomputed from those items exactly as the task aggregates them (a mean; a
token-weighted perplexity over documents: :mod:`dume_exp.evaluation.items`), domains average their tasks,
retention divides by the same resample's score of that domain's expert, and the average retention averages the
domains, as the table does. With several seeds, the seeds are resampled too (an outer level: the same items are
scored under every seed). Percentile intervals; resampling is seeded and vectorised (10,000 resamples of a full
table take well under a second).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..evaluation.items import AGGREGATES
from ..strategies.registry import expert_row


@dataclass(frozen=True)
class Interval:
    """A point estimate (mean over seeds, as the table) with its bootstrap interval."""

    estimate: float
    low: float
    high: float
    level: float
    n_items: int
    n_seeds: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def has_items(results: Mapping[str, Any]) -> bool:
    """Whether every row of every seed carries per-item outcomes for every domain."""
    return all(row.get("items") and all(row["items"].get(d) for d in results["domains"])
               for run in results["seeds"] for row in run["rows"])


def _common_names(results: Mapping[str, Any]) -> list[str]:
    names = [r["name"] for r in results["seeds"][0]["rows"]]
    return [n for n in names if all(any(r["name"] == n for r in run["rows"]) for run in results["seeds"])]


def _task_arrays(results: Mapping[str, Any], names: Sequence[str], domain: str, task: str
                 ) -> tuple[str, np.ndarray, np.ndarray]:
    """``(aggregate, num [C, S, n], den [C, S, n])`` of one task; every candidate and seed must share its items."""
    per_seed = [{r["name"]: r for r in run["rows"]} for run in results["seeds"]]
    first = per_seed[0][names[0]]["items"][domain][task]
    num = np.empty((len(names), len(per_seed), len(first["doc_id"])))
    den = np.empty_like(num)
    for c, name in enumerate(names):
        for s, rows in enumerate(per_seed):
            items = rows[name]["items"][domain][task]
            if items["doc_id"] != first["doc_id"] or items["aggregate"] != first["aggregate"]:
                raise ValueError(f"{name} (seed {results['seeds'][s]['seed']}) was scored on other items of {task} "
                                 f"than {names[0]}: a paired comparison needs the same evaluation items.")
            num[c, s], den[c, s] = items["num"], items["den"]
    return first["aggregate"], num, den


N_RESAMPLES = 10_000  # the tables' and claims' bootstrap
BOOTSTRAP_SEED = 0


class PairedBootstrap:
    """Bootstrap distribution of every candidate's per-domain and average retention, resampled jointly.

    ``PairedBootstrap(results).difference("dume", "weight_average")`` is the interval of the difference in
    average retention (percentage points); :meth:`retention` the interval of one candidate's.
    """

    def __init__(self, results: Mapping[str, Any], n_resamples: int = 10_000, seed: int = 0, level: float = 0.95):
        if not has_items(results):
            raise ValueError("These results carry no per-item outcomes (written before they were kept); run the "
                             "experiment again (resume=false) to get confidence intervals.")
        self.level, self.names = level, _common_names(results)
        self.index = {n: i for i, n in enumerate(self.names)}
        domains, rng = list(results["domains"]), np.random.default_rng(seed)
        n_seeds = len(results["seeds"])
        point, draws, self.n_items = [], [], 0
        for domain in domains:
            tasks = list(results["seeds"][0]["rows"][0]["items"][domain])
            score_point, score_draws = 0.0, 0.0
            for task in tasks:
                kind, num, den = _task_arrays(results, self.names, domain, task)
                n = num.shape[-1]
                self.n_items += n
                weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples).astype(np.float64)  # [B, n]
                ratio = np.einsum("bn,csn->bcs", weights, num) / np.einsum("bn,csn->bcs", weights, den)
                score_draws = score_draws + AGGREGATES[kind](ratio) / len(tasks)
                score_point = score_point + AGGREGATES[kind](num.sum(-1) / den.sum(-1)) / len(tasks)
            higher = results["metrics"][domain]["higher_is_better"]
            expert = self.index[expert_row(domain)]
            point.append(_retention(score_point, score_point[expert], higher))
            draws.append(_retention(score_draws, score_draws[:, expert], higher))
        self.point = np.stack(point).mean(axis=0)  # [C, S] average retention
        avg = np.stack(draws).mean(axis=0)  # [B, C, S]
        seeds = rng.integers(0, n_seeds, size=(n_resamples, n_seeds))  # the outer level (identity when one seed)
        self.draws = np.take_along_axis(avg, seeds[:, None, :], axis=2).mean(axis=2)  # [B, C]
        self.n_seeds = n_seeds

    def _interval(self, point: np.ndarray, draws: np.ndarray) -> Interval:
        tail = 100 * (1 - self.level) / 2
        low, high = np.nanpercentile(draws, [tail, 100 - tail])
        return Interval(float(point.mean()), float(low), float(high), self.level, self.n_items, self.n_seeds)

    def retention(self, name: str) -> Interval:
        """The average retention (%) of candidate ``name`` with its interval."""
        i = self._lookup(name)
        return self._interval(self.point[i], self.draws[:, i])

    def difference(self, a: str, b: str) -> Interval:
        """Average retention of ``a`` minus that of ``b`` (percentage points), paired over items and seeds."""
        i, j = self._lookup(a), self._lookup(b)
        return self._interval(self.point[i] - self.point[j], self.draws[:, i] - self.draws[:, j])

    def _lookup(self, name: str) -> int:
        if name not in self.index:
            raise KeyError(f"No candidate {name!r} in every seed of these results; they have {self.names}.")
        return self.index[name]


def table_bootstrap(results: Mapping[str, Any]) -> PairedBootstrap | None:
    """The bootstrap of the tables and claims (:data:`N_RESAMPLES`, :data:`BOOTSTRAP_SEED`); ``None`` for results
    without per-item outcomes."""
    return PairedBootstrap(results, N_RESAMPLES, BOOTSTRAP_SEED) if has_items(results) else None


def retention_intervals(boot: PairedBootstrap | None) -> dict[str, Interval]:
    """Each candidate's average-retention interval (empty without a bootstrap)."""
    return {} if boot is None else {name: boot.retention(name) for name in boot.names}


def _retention(score: np.ndarray, expert: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Retention (%) of ``score`` (``[..., C, S]``) against the expert's (``[..., S]``), as the table computes it."""
    expert = np.expand_dims(expert, -2)
    num, den = (score, expert) if higher_is_better else (expert, score)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den == 0, np.nan, 100.0 * num / den)
