"""Evaluation protocols as transformations of lm-eval task dicts.

* ``"harness"``: the tasks as built (lm-eval's prompts, few-shot, stop strings, greedy decoding).
* ``"reference"``: the DUME reference code's protocol for generation tasks: the doc's raw question
  text as the whole prompt (no few-shot, no template text, no generation prefix), sampling at
  temperature 0.7 for at most 256 new tokens, no stop strings besides end-of-sequence; seeded by
  the run's seed. Log-likelihood tasks (perplexity, multiple choice) are left unchanged.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .common import RAW_PROMPT

PROTOCOLS = ("harness", "reference")
REFERENCE_GENERATION: dict[str, Any] = {"until": [], "do_sample": True, "temperature": 0.7, "max_gen_toks": 256}


def apply_protocol(task: Mapping[str, Any], protocol: str) -> dict[str, Any]:
    """``task`` rewritten for ``protocol`` (a new dict; the input is not modified)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"Unknown evaluation protocol {protocol!r}; choose from {PROTOCOLS}.")
    out = dict(task)
    if protocol == "harness" or task.get("output_type") != "generate_until":
        return out
    raw = (task.get("metadata") or {}).get(RAW_PROMPT)
    if raw is None:
        raise ValueError(f"Task {task.get('task')!r} records no raw prompt template (metadata {RAW_PROMPT!r}); "
                         "build it with the dume_exp.evaluation.tasks builders.")
    for key in ("gen_prefix", "description", "fewshot_config"):
        out.pop(key, None)
    out.update(doc_to_text=raw, num_fewshot=0, generation_kwargs=dict(REFERENCE_GENERATION))
    return out
