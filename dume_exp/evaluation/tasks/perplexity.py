"""Per-domain perplexity: lm-eval's ``loglikelihood_rolling`` over whole documents ``{"text"}``.

lm-eval reports word perplexity, byte perplexity and bits per byte (no token-level perplexity).
Byte perplexity is the headline: unlike token perplexity it does not depend on the tokenizer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import require_file

# metric -> lm-eval aggregation (all lower-is-better)
PERPLEXITY_METRICS = {"word_perplexity": "weighted_perplexity", "byte_perplexity": "weighted_perplexity",
                      "bits_per_byte": "bits_per_byte"}
HEADLINE_PERPLEXITY = "byte_perplexity"


def perplexity_task(name: str, data_file: str | Path) -> dict[str, Any]:
    """A rolling-loglikelihood task over the ``text`` field of every row of ``data_file``."""
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(require_file(data_file))}},
        "test_split": "test",
        "output_type": "loglikelihood_rolling",
        "doc_to_text": "",
        "doc_to_target": "{{text}}",
        "metric_list": [{"metric": metric, "aggregation": agg, "higher_is_better": False}
                        for metric, agg in PERPLEXITY_METRICS.items()],
        "metadata": {"version": 1.0},
    }
