"""ARC-schema multiple choice (``acc_norm``), one task per language, averaged like okapi m-ARC.

Local files use the ARC schema (``question``, ``choices: {text, label}``, ``answerKey``), so they
reuse lm-eval's ``arc_easy.yaml``, whose prompt ``"Question: ...\\nAnswer:"`` is the okapi m-ARC
prompt too. The paper variant loads the okapi ``arc_<lang>`` configs unchanged (hub dataset).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import LM_EVAL_TASKS, local_data, render_shipped, shipped_config

ARC_YAML = "arc/arc_easy.yaml"
OKAPI_DIR = "okapi/arc_multilingual"
OKAPI_ARC_LANGUAGES: tuple[str, ...] = tuple(sorted(
    p.stem.removeprefix("arc_") for p in (LM_EVAL_TASKS / OKAPI_DIR).glob("arc_*.yaml")))


def arc_task(name: str, test_file: str | Path) -> dict[str, Any]:
    """lm-eval's ARC config on a local ARC-schema test file (zero-shot)."""
    return local_data(shipped_config(ARC_YAML), name, {"test": test_file}, num_fewshot=0)


def render_question(question: str) -> str:
    """The prompt lm-eval's ARC config renders for ``question`` (the zoo tunes its multilingual expert on it)."""
    return render_shipped(ARC_YAML, "doc_to_text", {"question": question})


def paper_arc_task(language: str) -> dict[str, Any]:
    """The okapi m-ARC task ``arc_<language>`` as shipped with lm-eval."""
    if language not in OKAPI_ARC_LANGUAGES:
        raise ValueError(f"lm-eval ships no okapi ARC task for {language!r}; choose from {OKAPI_ARC_LANGUAGES}.")
    return shipped_config(f"{OKAPI_DIR}/arc_{language}.yaml")
