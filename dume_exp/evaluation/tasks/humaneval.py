"""HumanEval-schema code generation scored by pass@1 in the sandbox (:mod:`.sandbox`).

Prompt, stop strings and generation settings come from lm-eval's shipped ``humaneval.yaml`` (or
``humaneval_instruct.yaml`` for chat models). Its scorer loads ``code_eval`` from the hub, which
fails offline, so scoring is ours: the program ``prompt + completion + test + check(entry_point)``
runs in the sandbox and passes only if it runs to its end, i.e. ``check`` returned: exiting early (with
any status), ``unittest.main()``, a kill or a timeout are failures, as in the reference harness.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import local_data, render_shipped, shipped_config, with_raw_prompt
from .sandbox import SandboxLimits, run_python

PASS_AT_1 = "pass@1"
SCORING_VERSION = 2  # 2: a pass needs the program to complete (1 counted exit status 0)
RAW_PROMPT = "{{prompt}}"
_FENCE = "```"
PLAIN_YAML = "humaneval/humaneval.yaml"
INSTRUCT_YAML = "humaneval/humaneval_instruct.yaml"


class HumanEvalScorer:
    """lm-eval ``process_results``: ``(doc, [completion]) -> {"pass@1": 0.0 | 1.0}``.

    ``instruct=True`` mirrors lm-eval's instruct variant: the completion is cut at the first code
    fence (the prompt itself was sent as the generation prefix).
    """

    def __init__(self, instruct: bool = False, limits: SandboxLimits = SandboxLimits()):
        self.instruct = instruct
        self.limits = limits

    def program(self, doc: dict[str, Any], completion: str) -> str:
        if self.instruct and _FENCE in completion:
            completion = completion[: completion.index(_FENCE)]
        return f"{doc['prompt']}{completion}\n\n{doc['test']}\n\ncheck({doc['entry_point']})\n"

    def __call__(self, doc: dict[str, Any], results: list[str]) -> dict[str, float]:
        return {PASS_AT_1: float(run_python(self.program(doc, results[0]), self.limits).passed)}

    def __repr__(self) -> str:  # part of evaluation cache keys: what decides a verdict, not where the tools live
        lim = self.limits
        return (f"HumanEvalScorer(instruct={self.instruct}, scoring={SCORING_VERSION}, timeout_s={lim.timeout_s}, "
                f"memory_mb={lim.memory_mb}, cpu_s={lim.cpu_s}, file_size_mb={lim.file_size_mb})")


def instruct_exchange(doc: dict[str, Any]) -> tuple[str, str]:
    """(user message, assistant generation prefix) that lm-eval's instruct HumanEval renders for ``doc``.

    The zoo's coding expert is tuned on exactly this exchange, so it learns the benchmark's prompt format.
    """
    return render_shipped(INSTRUCT_YAML, "doc_to_text", doc), render_shipped(INSTRUCT_YAML, "gen_prefix", doc)


def _humaneval_config(instruct: bool, limits: SandboxLimits) -> dict[str, Any]:
    cfg = shipped_config(INSTRUCT_YAML if instruct else PLAIN_YAML, resolve_functions=False)
    cfg.pop("filter_list")  # lm-eval's create_test filter; the scorer builds the program itself
    cfg.update(process_results=HumanEvalScorer(instruct, limits),
               metric_list=[{"metric": PASS_AT_1, "aggregation": "mean", "higher_is_better": True}])
    return with_raw_prompt(cfg, RAW_PROMPT)


def humaneval_task(name: str, test_file: str | Path, *, instruct: bool = False,
                   limits: SandboxLimits = SandboxLimits()) -> dict[str, Any]:
    """A HumanEval-schema task on a local file (``task_id, prompt, entry_point, canonical_solution, test``)."""
    return local_data(_humaneval_config(instruct, limits), name, {"test": test_file})


def paper_humaneval_task(*, instruct: bool = False, limits: SandboxLimits = SandboxLimits()) -> dict[str, Any]:
    """HumanEval on the hub's ``openai/openai_humaneval`` test split, scored by the sandbox."""
    return _humaneval_config(instruct, limits)
