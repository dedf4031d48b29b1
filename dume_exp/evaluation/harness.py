"""Scoring a suite through lm-evaluation-harness on an in-memory transformers model (dense or upcycled MoE).

:func:`evaluate` wraps the model once in lm-eval's ``HFLM`` (:func:`make_lm`), runs every task in one
``simple_evaluate`` call, and returns an :class:`EvalResult` with one headline score per domain,
its standard error, the item count, the per-item outcomes (:mod:`.items`), the raw lm-eval results and the
wall time.

Standard errors are computed from the per-item values lm-eval logs: closed form
``std(ddof=1)/sqrt(n)`` for mean-aggregated metrics (the binomial standard error for 0/1
scores), the cluster-robust ratio-estimator form for means over lists (IFEval's instruction-level
accuracy, prompts as clusters), a seeded item-level bootstrap of the task's own aggregation otherwise (perplexity,
IFEval instruction-level accuracy) when ``bootstrap_iters > 0``, else ``None``.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .items import task_items
from .suites import DomainSpec, Suite


@dataclass(frozen=True)
class DomainScore:
    """One domain's headline ``score`` (mean over its tasks), standard error, items and per-task scores."""

    score: float
    stderr: float | None
    n: int
    metric: str
    higher_is_better: bool
    per_task: dict[str, float]
    items: dict[str, dict[str, Any]] | None = None  # per task, the per-item outcomes (:mod:`.items`)


@dataclass
class EvalResult:
    """Per-domain headline scores plus lm-eval's raw results (``samples`` only if logged)."""

    suite: str
    domains: dict[str, DomainScore]
    raw: dict[str, Any]
    wall_s: float
    protocol: str
    apply_chat_template: bool

    def scores(self) -> dict[str, float]:
        return {d: s.score for d, s in self.domains.items()}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view (non-JSON values in the raw results become strings)."""
        return json.loads(json.dumps({
            "suite": self.suite, "protocol": self.protocol, "apply_chat_template": self.apply_chat_template,
            "wall_s": self.wall_s, "domains": {d: vars(s) for d, s in self.domains.items()}, "raw": self.raw,
        }, default=str))



def make_lm(model: torch.nn.Module, tokenizer: Any, *, batch_size: int = 8, max_length: int | None = None):
    """lm-eval's ``HFLM`` around an in-memory model, used as is (dtype and device kept; bf16 stays bf16).

    Log-softmaxes are taken in float32 whatever the model dtype. ``max_length=None`` lets HFLM read
    it from the model config.
    """
    from lm_eval.models.huggingface import HFLM

    model.eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length,
              softmax_dtype=torch.float32, backend="causal")  # DUME model types are not in transformers' mapping
    _share_requests(lm)
    return lm


def _share_requests(lm: Any) -> None:
    """Data parallelism for a launched job (``accelerate launch`` / ``torchrun`` with several processes): each
    process scores every ``world_size``-th request and lm-eval's own gather collects them on rank 0.

    lm-eval's HFLM sets its rank and world size only for a model it loads itself onto more than one GPU; an
    in-memory model (or any CPU run) would have every process score everything. Each process must hold the model on
    its own device (``Accelerator().device``).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    from accelerate import Accelerator

    lm.accelerator = Accelerator(cpu=not torch.cuda.is_available())  # without cpu=True a CPU job stays 1 process
    lm._rank, lm._world_size = lm.accelerator.process_index, lm.accelerator.num_processes


def _aggregation_name(task: Mapping[str, Any], metric: str) -> str | None:
    for entry in task.get("metric_list") or []:
        if entry["metric"] == metric and "aggregation" in entry:
            agg = entry["aggregation"]
            return agg if isinstance(agg, str) else getattr(agg, "__name__", None)
    return None


def _aggregation(task: Mapping[str, Any], metric: str) -> Callable[[list], float]:
    from lm_eval.api.registry import get_aggregation, get_metric_aggregation

    for entry in task.get("metric_list") or []:
        if entry["metric"] == metric and "aggregation" in entry:
            agg = entry["aggregation"]
            return get_aggregation(agg) if isinstance(agg, str) else agg
    return get_metric_aggregation(metric)


def _stderr(values: list, aggregate: Callable[[list], float], bootstrap_iters: int,
            rng: np.random.Generator) -> float | None:
    from lm_eval.api.registry import get_aggregation

    n = len(values)
    if n < 2:
        return None
    if aggregate is get_aggregation("mean") and all(isinstance(v, (int, float)) for v in values):
        return float(np.std(np.asarray(values, dtype=np.float64), ddof=1) / math.sqrt(n))
    if all(isinstance(v, list) and v for v in values):
        sums = np.array([sum(map(float, v)) for v in values])
        sizes = np.array([len(v) for v in values], dtype=np.float64)
        ratio = sums.sum() / sizes.sum()
        if math.isclose(aggregate(values), ratio, rel_tol=1e-12, abs_tol=1e-12):
            # the mean over every item of every sample (IFEval's instruction level): ratio-estimator standard
            # error with the samples (prompts) as clusters, since items of one prompt are not independent
            return float(math.sqrt(n / (n - 1) * ((sums - ratio * sizes) ** 2).sum()) / sizes.sum())
    if bootstrap_iters <= 0:
        return None
    stats = [aggregate([values[i] for i in rng.integers(0, n, n)]) for _ in range(bootstrap_iters)]
    return float(np.std(stats, ddof=1))


def _domain_score(spec: DomainSpec, raw: Mapping[str, Any], bootstrap_iters: int, seed: int) -> DomainScore:
    rng = np.random.default_rng(seed)
    per_task, stderrs, n, items = {}, [], 0, {}
    for task in spec.tasks:
        name = task["task"]
        results = raw["results"][name]
        if spec.key not in results:
            raise KeyError(f"Task {name} reports no {spec.key!r}; it reports {sorted(results)}.")
        per_task[name] = float(results[spec.key])
        values = [s[spec.metric] for s in raw["samples"][name] if s["filter"] == spec.filter]
        n += len(values)
        stderrs.append(_stderr(values, _aggregation(task, spec.metric), bootstrap_iters, rng))
        items[name] = task_items(raw["samples"][name], spec.metric, spec.filter, _aggregation_name(task, spec.metric),
                                 per_task[name])
    t = len(per_task)
    stderr = None if any(se is None for se in stderrs) else math.sqrt(sum(se * se for se in stderrs)) / t
    return DomainScore(sum(per_task.values()) / t, stderr, n, spec.metric, spec.higher_is_better, per_task, items)


def run_suite(lm: Any, suite: Suite, *, limit: int | float | None = None, bootstrap_iters: int = 0, seed: int = 0,
              apply_chat_template: bool | None = None, log_samples: bool = False) -> EvalResult | None:
    """Evaluate an lm-eval ``LM`` on ``suite`` (one ``simple_evaluate`` call, every seed set to ``seed``).

    ``apply_chat_template=None`` uses the suite's setting; ``limit`` caps the items of every task. In a
    data-parallel job (:func:`make_lm`) only rank 0 gets the result; the other processes get ``None``.
    """
    import lm_eval
    from lm_eval.tasks import TaskManager

    chat = suite.apply_chat_template if apply_chat_template is None else apply_chat_template
    tokenizer = getattr(lm, "tokenizer", None)
    if chat and tokenizer is not None and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"Suite {suite.name!r} applies the chat template but the tokenizer has none; "
                         "pass apply_chat_template=False or a tokenizer with a chat_template.")
    start = time.perf_counter()
    raw = lm_eval.simple_evaluate(
        model=lm, tasks=suite.tasks(), task_manager=TaskManager(include_defaults=False), limit=limit,
        bootstrap_iters=bootstrap_iters, log_samples=True, apply_chat_template=chat, fewshot_as_multiturn=chat,
        random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
        confirm_run_unsafe_code=True)
    wall = time.perf_counter() - start
    if raw is None:  # a data-parallel process other than rank 0: its scores went to rank 0
        return None
    domains = {d: _domain_score(spec, raw, bootstrap_iters, seed) for d, spec in suite.domains.items()}
    if not log_samples:
        raw.pop("samples", None)
    return EvalResult(suite.name, domains, raw, wall, suite.protocol, chat)


def evaluate(model: torch.nn.Module, tokenizer: Any, suite: Suite, *, batch_size: int = 8,
             limit: int | float | None = None, bootstrap_iters: int = 0, seed: int = 0,
             apply_chat_template: bool | None = None, log_samples: bool = False,
             max_length: int | None = None) -> EvalResult | None:
    """Evaluate an in-memory transformers model (dense or upcycled MoE) on ``suite`` (``None`` on data-parallel
    processes other than rank 0)."""
    lm = make_lm(model, tokenizer, batch_size=batch_size, max_length=max_length)
    return run_suite(lm, suite, limit=limit, bootstrap_iters=bootstrap_iters, seed=seed,
                     apply_chat_template=apply_chat_template, log_samples=log_samples)
