"""Evaluation through lm-evaluation-harness on in-memory transformers models (dense or upcycled MoE).

A :class:`Suite` maps each domain to its lm-eval task dicts and a headline metric; :func:`evaluate`
wraps the model once in lm-eval's ``HFLM`` (:func:`make_lm`), runs every task in one
``simple_evaluate`` call, and returns an :class:`EvalResult` with one headline score per domain,
its standard error, the item count, the raw lm-eval results and the wall time.

Headline metrics: CLM domains report ``byte_perplexity`` (lower is better; tokenizer-independent,
lm-eval has no token-level perplexity); reasoning domains follow the paper: GSM8K
``exact_match`` (flexible-extract), ARC ``acc_norm`` averaged over languages, HumanEval
``pass@1``, IFEval ``inst_level_strict_acc``. A domain with several tasks reports their unweighted
mean (as the paper averages m-ARC over languages).

Standard errors are computed from the per-item values lm-eval logs: closed form
``std(ddof=1)/sqrt(n)`` for mean-aggregated metrics (the binomial standard error for 0/1
scores), the cluster-robust ratio-estimator form for means over lists (IFEval's instruction-level
accuracy, prompts as clusters), a seeded item-level bootstrap of the task's own aggregation otherwise (perplexity,
IFEval instruction-level accuracy) when ``bootstrap_iters > 0``, else ``None``.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .tasks import (HEADLINE_PERPLEXITY, OKAPI_ARC_LANGUAGES, PASS_AT_1, PERPLEXITY_METRICS, SandboxLimits,
                    apply_protocol, arc_task, gsm8k_task, humaneval_task, ifeval_task, paper_arc_task,
                    paper_gsm8k_task, paper_humaneval_task, paper_ifeval_task, perplexity_task)
from .tasks.common import with_max_gen_toks

CLM_DOMAINS = ("code", "math", "biomedical", "legal", "german")
REASONING_DOMAINS = ("math", "multilingual", "coding", "instruction")
# domain -> (metric, filter); all higher-is-better
REASONING_HEADLINES = {"math": ("exact_match", "flexible-extract"), "multilingual": ("acc_norm", "none"),
                       "coding": (PASS_AT_1, "none"), "instruction": ("inst_level_strict_acc", "none")}


@dataclass(frozen=True)
class DomainSpec:
    """The lm-eval tasks of one domain and the metric (``"<metric>,<filter>"`` in lm-eval) to report."""

    tasks: tuple[dict[str, Any], ...]
    metric: str
    filter: str = "none"
    higher_is_better: bool = True

    @property
    def key(self) -> str:
        return f"{self.metric},{self.filter}"


@dataclass(frozen=True)
class Suite:
    """Domains to evaluate, whether prompts go through the chat template, and the protocol applied."""

    name: str
    domains: Mapping[str, DomainSpec]
    apply_chat_template: bool = False
    protocol: str = "harness"

    def tasks(self) -> list[dict[str, Any]]:
        return [task for spec in self.domains.values() for task in spec.tasks]

    def select(self, domains: Iterable[str]) -> Suite:
        """The same suite restricted to ``domains``."""
        domains = list(domains)
        unknown = sorted(set(domains) - set(self.domains))
        if unknown:
            raise KeyError(f"Suite {self.name!r} has no domain(s) {unknown}; it has {list(self.domains)}.")
        return replace(self, domains={d: self.domains[d] for d in domains})

    def _map_tasks(self, fn: Callable[[dict[str, Any]], dict[str, Any]], **changes: Any) -> Suite:
        domains = {d: replace(spec, tasks=tuple(fn(t) for t in spec.tasks)) for d, spec in self.domains.items()}
        return replace(self, domains=domains, **changes)

    def with_protocol(self, protocol: str) -> Suite:
        """The suite's tasks rewritten for ``protocol`` (see :mod:`dume_exp.tasks.protocol`).

        Generation budgets become the protocol's. Only a ``"harness"`` suite can be rewritten.
        """
        if self.protocol not in ("harness", protocol):
            raise ValueError(f"Suite {self.name!r} already uses the {self.protocol!r} protocol; rebuild it "
                             f"with protocol={protocol!r} instead.")
        return self._map_tasks(lambda t: apply_protocol(t, protocol), protocol=protocol)

    def with_max_gen_toks(self, max_gen_toks: int | None) -> Suite:
        """Every generation task capped at ``max_gen_toks`` new tokens (``None``: unchanged)."""
        return self._map_tasks(lambda t: with_max_gen_toks(t, max_gen_toks))


@dataclass(frozen=True)
class DomainScore:
    """One domain's headline ``score`` (mean over its tasks), standard error, items and per-task scores."""

    score: float
    stderr: float | None
    n: int
    metric: str
    higher_is_better: bool
    per_task: dict[str, float]


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


# ----------------------------------------------------------------------------------------------- suites

def clm_suite(clm_dir: str | Path, domains: Sequence[str] = CLM_DOMAINS, split: str = "test",
              metric: str = HEADLINE_PERPLEXITY) -> Suite:
    """Per-domain perplexity on ``<clm_dir>/<domain>/<split>.jsonl`` (rows ``{"text"}``)."""
    if metric not in PERPLEXITY_METRICS:
        raise ValueError(f"CLM metric must be one of {list(PERPLEXITY_METRICS)}; got {metric!r}.")
    clm_dir = Path(clm_dir)
    specs = {d: DomainSpec((perplexity_task(f"dume_ppl_{d}_{split}", clm_dir / d / f"{split}.jsonl"),),
                           metric, "none", higher_is_better=False) for d in domains}
    return Suite(f"clm-{split}", specs, apply_chat_template=False)


def _reasoning_suite(name: str, builders: Mapping[str, Callable[[], list[dict[str, Any]]]],
                     domains: Sequence[str], max_gen_toks: int | None, chat: bool, protocol: str) -> Suite:
    unknown = sorted(set(domains) - set(builders))
    if unknown:
        raise KeyError(f"Unknown reasoning domain(s) {unknown}; choose from {list(builders)}.")
    specs = {d: DomainSpec(tuple(builders[d]()), *REASONING_HEADLINES[d], higher_is_better=True) for d in domains}
    return Suite(name, specs, apply_chat_template=chat).with_protocol(protocol).with_max_gen_toks(max_gen_toks)


def _discover_arc_languages(folder: Path) -> list[str]:
    langs = sorted(p.name.removeprefix("arc_").removesuffix("_test.jsonl") for p in folder.glob("arc_*_test.jsonl"))
    if not langs:
        raise FileNotFoundError(f"No ARC files arc_<lang>_test.jsonl in {folder}; build the reasoning data first.")
    return langs


def reasoning_suite(reasoning_dir: str | Path, *, domains: Sequence[str] = REASONING_DOMAINS,
                    math_sets: Sequence[str] = ("gsm8k",), arc_languages: Sequence[str] | None = None,
                    coding_sets: Sequence[str] = ("humaneval",), num_fewshot: int = 5,
                    max_gen_toks: int | None = None, chat: bool = True, protocol: str = "harness",
                    sandbox: SandboxLimits = SandboxLimits(), nltk_data: str | Path | None = None) -> Suite:
    """The four reasoning domains on local benchmark-schema files under ``reasoning_dir``.

    ``math_sets`` name ``math/<set>_test.jsonl`` files (GSM8K schema; few-shot from
    ``math/gsm8k_train.jsonl``); ``arc_languages`` default to every ``multilingual/arc_<lang>_test.jsonl``;
    ``coding_sets`` name ``coding/<set>_test.jsonl`` files (HumanEval schema). ``chat=True``
    (an instruct model) applies the chat template and uses lm-eval's instruct HumanEval prompt.
    ``max_gen_toks`` caps every generation task, the protocol's own budget included (``None``: the
    task's or protocol's default).
    """
    root = Path(reasoning_dir)
    builders = {
        "math": lambda: [gsm8k_task(f"dume_math_{s}", root / "math" / f"{s}_test.jsonl",
                                    root / "math" / "gsm8k_train.jsonl", num_fewshot) for s in math_sets],
        "multilingual": lambda: [arc_task(f"dume_arc_{lang}", root / "multilingual" / f"arc_{lang}_test.jsonl")
                                 for lang in (arc_languages or _discover_arc_languages(root / "multilingual"))],
        "coding": lambda: [humaneval_task(f"dume_coding_{s}", root / "coding" / f"{s}_test.jsonl",
                                          instruct=chat, limits=sandbox) for s in coding_sets],
        "instruction": lambda: [ifeval_task("dume_ifeval", root / "instruction" / "ifeval_test.jsonl",
                                            nltk_data=nltk_data)],
    }
    return _reasoning_suite("reasoning", builders, domains, max_gen_toks, chat, protocol)


def paper_reasoning_suite(*, domains: Sequence[str] = REASONING_DOMAINS,
                          arc_languages: Sequence[str] = OKAPI_ARC_LANGUAGES, num_fewshot: int = 5,
                          max_gen_toks: int | None = None, chat: bool = True, protocol: str = "harness",
                          sandbox: SandboxLimits = SandboxLimits(), nltk_data: str | Path | None = None) -> Suite:
    """The paper's benchmarks from the hub (needs hub access): gsm8k, okapi ``arc_<lang>``,
    HumanEval (``openai/openai_humaneval``, sandboxed scoring) and ifeval."""
    builders = {
        "math": lambda: [paper_gsm8k_task(num_fewshot)],
        "multilingual": lambda: [paper_arc_task(lang) for lang in arc_languages],
        "coding": lambda: [paper_humaneval_task(instruct=chat, limits=sandbox)],
        "instruction": lambda: [paper_ifeval_task(nltk_data=nltk_data)],
    }
    return _reasoning_suite("reasoning-paper", builders, domains, max_gen_toks, chat, protocol)


# ------------------------------------------------------------------------------------------- evaluation

def make_lm(model: torch.nn.Module, tokenizer: Any, *, batch_size: int = 8, max_length: int | None = None):
    """lm-eval's ``HFLM`` around an in-memory model, used as is (dtype and device kept; bf16 stays bf16).

    Log-softmaxes are taken in float32 whatever the model dtype. ``max_length=None`` lets HFLM read
    it from the model config.
    """
    from lm_eval.models.huggingface import HFLM

    model.eval()
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length,
                softmax_dtype=torch.float32, backend="causal")  # DUME model types are not in transformers' mapping


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
    per_task, stderrs, n = {}, [], 0
    for task in spec.tasks:
        name = task["task"]
        results = raw["results"][name]
        if spec.key not in results:
            raise KeyError(f"Task {name} reports no {spec.key!r}; it reports {sorted(results)}.")
        per_task[name] = float(results[spec.key])
        values = [s[spec.metric] for s in raw["samples"][name] if s["filter"] == spec.filter]
        n += len(values)
        stderrs.append(_stderr(values, _aggregation(task, spec.metric), bootstrap_iters, rng))
    t = len(per_task)
    stderr = None if any(se is None for se in stderrs) else math.sqrt(sum(se * se for se in stderrs)) / t
    return DomainScore(sum(per_task.values()) / t, stderr, n, spec.metric, spec.higher_is_better, per_task)


def run_suite(lm: Any, suite: Suite, *, limit: int | float | None = None, bootstrap_iters: int = 0, seed: int = 0,
              apply_chat_template: bool | None = None, log_samples: bool = False) -> EvalResult:
    """Evaluate an lm-eval ``LM`` on ``suite`` (one ``simple_evaluate`` call, every seed set to ``seed``).

    ``apply_chat_template=None`` uses the suite's setting; ``limit`` caps the items of every task.
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
    domains = {d: _domain_score(spec, raw, bootstrap_iters, seed) for d, spec in suite.domains.items()}
    if not log_samples:
        raw.pop("samples", None)
    return EvalResult(suite.name, domains, raw, wall, suite.protocol, chat)


def evaluate(model: torch.nn.Module, tokenizer: Any, suite: Suite, *, batch_size: int = 8,
             limit: int | float | None = None, bootstrap_iters: int = 0, seed: int = 0,
             apply_chat_template: bool | None = None, log_samples: bool = False,
             max_length: int | None = None) -> EvalResult:
    """Evaluate an in-memory transformers model (dense or upcycled MoE) on ``suite``."""
    lm = make_lm(model, tokenizer, batch_size=batch_size, max_length=max_length)
    return run_suite(lm, suite, limit=limit, bootstrap_iters=bootstrap_iters, seed=seed,
                     apply_chat_template=apply_chat_template, log_samples=log_samples)
