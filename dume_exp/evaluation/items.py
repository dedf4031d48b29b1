"""Per-item outcomes of a task, kept so that any two candidates can be compared item by item (paired statistics).

Each item (a document, a question, a prompt) is a pair ``(num, den)`` and a task's score is a function of the
ratio Σnum / Σden over its items:

- ``mean``: a 0/1 or real score per item (``den`` = 1), or a list of checks per item (IFEval's instructions:
  ``num`` = checks passed, ``den`` = checks); score = Σnum / Σden.
- ``perplexity``: a document's log-likelihood and its length in bytes or words; score = exp(−Σnum / Σden).
- ``bits_per_byte``: the same pairs; score = −Σnum / Σden / ln 2.

Resampling items and recomputing the ratio then reproduces the task's own aggregation exactly, which is what
:func:`task_items` checks against lm-eval's reported score.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

AGGREGATES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": lambda ratio: ratio,
    "perplexity": lambda ratio: np.exp(-ratio),
    "bits_per_byte": lambda ratio: -ratio / math.log(2),
}
_LM_EVAL_AGGREGATES = {"weighted_perplexity": "perplexity", "perplexity": "perplexity", "bits_per_byte": "bits_per_byte"}


def aggregate_kind(aggregation: str | None, values: Sequence[Any]) -> str:
    """The :data:`AGGREGATES` entry that reproduces lm-eval's ``aggregation`` of per-sample ``values``."""
    if aggregation in _LM_EVAL_AGGREGATES:
        return _LM_EVAL_AGGREGATES[aggregation]
    if all(isinstance(v, (bool, int, float)) for v in values) or all(isinstance(v, list) for v in values):
        return "mean"
    raise ValueError(f"No per-item form for lm-eval aggregation {aggregation!r} of values like {values[:1]!r}.")


def _pair(value: Any, kind: str) -> tuple[float, float]:
    if kind != "mean":
        ll, size = value
        return float(ll), float(size)
    if isinstance(value, list):
        return float(sum(map(float, value))), float(len(value))
    return float(value), 1.0


def task_items(samples: Sequence[Mapping[str, Any]], metric: str, filter_: str, aggregation: str | None,
               reported: float) -> dict[str, Any]:
    """``{"aggregate", "doc_id", "num", "den"}`` of one task from lm-eval's logged ``samples``, in ``doc_id`` order.

    Raises ``ValueError`` when the items do not reproduce lm-eval's ``reported`` score (to 1e-9 relative), so a
    per-item record can never disagree with the score it belongs to.
    """
    rows = sorted((s for s in samples if s["filter"] == filter_), key=lambda s: s["doc_id"])
    if not rows:
        raise ValueError(f"lm-eval logged no samples with filter {filter_!r} for metric {metric!r}.")
    kind = aggregate_kind(aggregation, [s[metric] for s in rows])
    num, den = zip(*(_pair(s[metric], kind) for s in rows))
    items = {"aggregate": kind, "doc_id": [int(s["doc_id"]) for s in rows], "num": list(num), "den": list(den)}
    score = items_score(items)
    if not math.isclose(score, reported, rel_tol=1e-9, abs_tol=1e-12):
        raise ValueError(f"Per-item {metric!r} values give {score!r} but lm-eval reports {reported!r}: the "
                         f"aggregation {aggregation!r} has no exact per-item form here.")
    return items


def items_score(items: Mapping[str, Any]) -> float:
    """A task's score from its items (the inverse check of :func:`task_items`)."""
    ratio = np.sum(items["num"], dtype=np.float64) / np.sum(items["den"], dtype=np.float64)
    return float(AGGREGATES[items["aggregate"]](ratio))
