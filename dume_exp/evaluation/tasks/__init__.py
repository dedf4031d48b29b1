"""lm-eval task builders (config dicts with absolute local data paths) and the code sandbox."""
from .arc import OKAPI_ARC_LANGUAGES, arc_task, paper_arc_task
from .gsm8k import gsm8k_task, paper_gsm8k_task
from .humaneval import PASS_AT_1, HumanEvalScorer, humaneval_task, paper_humaneval_task
from .ifeval import ensure_punkt_tab, ifeval_task, paper_ifeval_task
from .perplexity import HEADLINE_PERPLEXITY, PERPLEXITY_METRICS, perplexity_task
from .protocol import PROTOCOLS, apply_protocol
from .sandbox import SandboxLimits, SandboxResult, SandboxUnavailable, isolation_problem, require_isolation, run_python

__all__ = [
    "HEADLINE_PERPLEXITY", "OKAPI_ARC_LANGUAGES", "PASS_AT_1", "PERPLEXITY_METRICS", "PROTOCOLS",
    "HumanEvalScorer", "SandboxLimits", "SandboxResult", "apply_protocol", "arc_task", "ensure_punkt_tab",
    "SandboxUnavailable", "gsm8k_task", "humaneval_task", "ifeval_task", "isolation_problem", "paper_arc_task",
    "paper_gsm8k_task", "paper_humaneval_task", "paper_ifeval_task", "perplexity_task", "require_isolation",
    "run_python",
]
