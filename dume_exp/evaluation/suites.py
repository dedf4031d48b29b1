"""Suites: each domain's lm-eval task dicts and headline metric, for the embedded zoo's data and the paper's.

Headline metrics: CLM domains report ``byte_perplexity`` (lower is better; tokenizer-independent,
lm-eval has no token-level perplexity); reasoning domains follow the paper: GSM8K
``exact_match`` (flexible-extract), ARC ``acc_norm`` averaged over languages, HumanEval
``pass@1``, IFEval ``inst_level_strict_acc``. A domain with several tasks reports their unweighted
mean (as the paper averages m-ARC over languages).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..utils.data_layout import CLM_DOMAINS, REASONING_DOMAINS, set_names, set_path, split_path
from .tasks import (HEADLINE_PERPLEXITY, OKAPI_ARC_LANGUAGES, PASS_AT_1, PERPLEXITY_METRICS, SandboxLimits,
                    apply_protocol, arc_task, gsm8k_task, humaneval_task, ifeval_task, paper_arc_task,
                    paper_gsm8k_task, paper_humaneval_task, paper_ifeval_task, perplexity_task)
from .tasks.common import with_max_gen_toks

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
        """The suite's tasks rewritten for ``protocol`` (see :mod:`dume_exp.evaluation.tasks.protocol`).

        Generation budgets become the protocol's. Only a ``"harness"`` suite can be rewritten.
        """
        if self.protocol not in ("harness", protocol):
            raise ValueError(f"Suite {self.name!r} already uses the {self.protocol!r} protocol; rebuild it "
                             f"with protocol={protocol!r} instead.")
        return self._map_tasks(lambda t: apply_protocol(t, protocol), protocol=protocol)

    def with_max_gen_toks(self, max_gen_toks: int | None) -> Suite:
        """Every generation task capped at ``max_gen_toks`` new tokens (``None``: unchanged)."""
        return self._map_tasks(lambda t: with_max_gen_toks(t, max_gen_toks))



def clm_suite(clm_dir: str | Path, domains: Sequence[str] = CLM_DOMAINS, split: str = "test",
              metric: str = HEADLINE_PERPLEXITY) -> Suite:
    """Per-domain perplexity on ``<clm_dir>/<domain>/<split>.jsonl`` (rows ``{"text"}``)."""
    if metric not in PERPLEXITY_METRICS:
        raise ValueError(f"CLM metric must be one of {list(PERPLEXITY_METRICS)}; got {metric!r}.")
    specs = {d: DomainSpec((perplexity_task(f"dume_ppl_{d}_{split}", split_path(clm_dir, d, split)),),
                           metric, "none", higher_is_better=False) for d in domains}
    return Suite(f"clm-{split}", specs, apply_chat_template=False)


def _reasoning_suite(name: str, builders: Mapping[str, Callable[[], list[dict[str, Any]]]],
                     domains: Sequence[str], max_gen_toks: int | None, chat: bool, protocol: str) -> Suite:
    unknown = sorted(set(domains) - set(builders))
    if unknown:
        raise KeyError(f"Unknown reasoning domain(s) {unknown}; choose from {list(builders)}.")
    specs = {d: DomainSpec(tuple(builders[d]()), *REASONING_HEADLINES[d], higher_is_better=True) for d in domains}
    return Suite(name, specs, apply_chat_template=chat).with_protocol(protocol).with_max_gen_toks(max_gen_toks)


def _discover_arc_languages(root: Path) -> list[str]:
    langs = [name.removeprefix("arc_") for name in set_names(root, "multilingual") if name.startswith("arc_")]
    if not langs:
        raise FileNotFoundError(f"No ARC files arc_<lang>_test.jsonl in {root / 'multilingual'}; build the reasoning "
                                "data first.")
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
        "math": lambda: [gsm8k_task(f"dume_math_{s}", set_path(root, "math", s),
                                    set_path(root, "math", "gsm8k", "train"), num_fewshot) for s in math_sets],
        "multilingual": lambda: [arc_task(f"dume_arc_{lang}", set_path(root, "multilingual", f"arc_{lang}"))
                                 for lang in (arc_languages or _discover_arc_languages(root))],
        "coding": lambda: [humaneval_task(f"dume_coding_{s}", set_path(root, "coding", s),
                                          instruct=chat, limits=sandbox) for s in coding_sets],
        "instruction": lambda: [ifeval_task("dume_ifeval", set_path(root, "instruction", "ifeval"),
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
