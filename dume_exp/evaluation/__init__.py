"""Evaluation: suites of lm-eval tasks per domain (:mod:`.suites`), scoring through lm-evaluation-harness
(:mod:`.harness`), and the task builders and code sandbox (:mod:`.tasks`)."""
from .harness import DomainScore, EvalResult, evaluate, make_lm, run_suite
from .suites import (CLM_DOMAINS, REASONING_DOMAINS, DomainSpec, Suite, clm_suite, paper_reasoning_suite,
                     reasoning_suite)

__all__ = ["CLM_DOMAINS", "REASONING_DOMAINS", "DomainScore", "DomainSpec", "EvalResult", "Suite", "clm_suite",
           "evaluate", "make_lm", "paper_reasoning_suite", "reasoning_suite", "run_suite"]
