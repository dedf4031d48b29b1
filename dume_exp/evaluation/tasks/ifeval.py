"""IFEval-schema instruction following (``key, prompt, instruction_id_list, kwargs``).

Uses lm-eval's shipped ``ifeval.yaml`` and so its own ``process_results`` and aggregations
(headline ``inst_level_strict_acc``). The scorer needs NLTK's ``punkt_tab`` data, which must be
present locally (offline machines cannot ``nltk.download`` it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import local_data, shipped_config, with_raw_prompt

IFEVAL_YAML = "ifeval/ifeval.yaml"
RAW_PROMPT = "{{prompt}}"
PUNKT_TAB = "tokenizers/punkt_tab/english/"


def ensure_punkt_tab(nltk_data: str | Path | None = None) -> None:
    """Make sure NLTK finds ``punkt_tab``; ``nltk_data`` (a folder) is added to NLTK's search path."""
    import nltk

    if nltk_data is not None and str(nltk_data) not in nltk.data.path:
        nltk.data.path.insert(0, str(nltk_data))
    try:
        nltk.data.find(PUNKT_TAB)
    except LookupError:
        raise RuntimeError(
            f"IFEval scoring needs NLTK's punkt_tab data ({PUNKT_TAB}) and cannot download it offline. "
            "Set NLTK_DATA (or pass nltk_data=) to a folder holding tokenizers/punkt_tab/english/, "
            "as built by dume_exp.zoo.") from None


def ifeval_task(name: str, test_file: str | Path, *, nltk_data: str | Path | None = None) -> dict[str, Any]:
    """lm-eval's ifeval task on a local IFEval-schema file."""
    ensure_punkt_tab(nltk_data)
    return with_raw_prompt(local_data(shipped_config(IFEVAL_YAML), name, {"test": test_file}), RAW_PROMPT)


def paper_ifeval_task(*, nltk_data: str | Path | None = None) -> dict[str, Any]:
    """lm-eval's ifeval task as shipped (hub dataset ``google/IFEval``)."""
    ensure_punkt_tab(nltk_data)
    return with_raw_prompt(shipped_config(IFEVAL_YAML), RAW_PROMPT)
