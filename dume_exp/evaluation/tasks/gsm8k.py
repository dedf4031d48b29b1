"""GSM8K-schema maths (rows ``{"question", "answer": "... #### N"}``) with lm-eval's own gsm8k config.

Prompt, stop strings, ``strict-match`` and ``flexible-extract`` filters and the exact-match metric
all come from lm-eval's shipped ``gsm8k.yaml``; few-shot examples come from a local train file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import local_data, render_shipped, shipped_config, with_raw_prompt

GSM8K_YAML = "gsm8k/gsm8k.yaml"
RAW_QUESTION = "{{question}}"


def gsm8k_task(name: str, test_file: str | Path, train_file: str | Path, num_fewshot: int = 5) -> dict[str, Any]:
    """lm-eval's gsm8k task on local files; few-shot examples drawn from ``train_file``."""
    cfg = local_data(shipped_config(GSM8K_YAML), name, {"test": test_file, "train": train_file},
                     num_fewshot=num_fewshot)
    return with_raw_prompt(cfg, RAW_QUESTION)


def render_question(question: str) -> str:
    """The 0-shot prompt lm-eval's gsm8k renders for ``question`` (the zoo tunes its math expert on it)."""
    return render_shipped(GSM8K_YAML, "doc_to_text", {"question": question})


def paper_gsm8k_task(num_fewshot: int = 5) -> dict[str, Any]:
    """lm-eval's gsm8k task as shipped (hub dataset ``openai/gsm8k``)."""
    return with_raw_prompt({**shipped_config(GSM8K_YAML), "num_fewshot": num_fewshot}, RAW_QUESTION)
