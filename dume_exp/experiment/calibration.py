"""Calibration texts: what the routers (statistics, BTX/DUME+ training) see of each domain's data."""
from __future__ import annotations

import functools
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..utils.data_layout import numbered_rows, split_files


PROMPT_FIELDS = ("question", "prompt")  # the fields of a row that make its prompt


def assistant_header(tokenizer: Any) -> str:
    """What the tokenizer's chat template writes before an assistant turn (its generation prompt), e.g. ChatML's
    ``<|im_start|>assistant\\n``."""
    fix = "use calibration.text=prompt_answer, or a tokenizer whose chat template has one (experts.tokenizer)"
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"calibration.text=prompt cuts chat transcripts after the assistant header of the tokenizer's "
                         f"chat template, but the tokenizer has no chat template; {fix}.")
    turn = [{"role": "user", "content": "PLACEHOLDER"}]
    closed = tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=False)
    opened = tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
    if not opened.startswith(closed) or not opened[len(closed):].strip():
        raise ValueError(f"calibration.text=prompt cuts chat transcripts after the assistant header, but the "
                         f"tokenizer's chat template renders no generation prompt; {fix}.")
    return opened[len(closed):]


def row_text(row: Mapping[str, Any], mode: str, header: Callable[[], str]) -> str:
    """One data row's calibration text.

    ``prompt_answer``: its ``text``, else its question/prompt and answer fields. ``prompt``: its question/prompt
    fields, else its ``text`` (a chat transcript) up to and including the first assistant header (``header()``).
    """
    if mode == "prompt_answer":
        return row.get("text") or "\n".join(str(row[k]) for k in (*PROMPT_FIELDS, "answer") if k in row)
    prompt = [str(row[k]) for k in PROMPT_FIELDS if k in row]
    if prompt:
        return "\n".join(prompt)
    text, head = str(row.get("text", "")), header()
    end = text.find(head)
    if end < 0:
        fields = "/".join(PROMPT_FIELDS)
        raise ValueError(f"calibration.text=prompt: the row has no {fields} field and its text is no chat transcript "
                         f"with the assistant header {head!r} of the tokenizer's chat template; give the rows {fields} "
                         f"fields, use the experts' own tokenizer (experts.tokenizer) or calibration.text=prompt_answer.")
    return text[: end + len(head)]


def domain_texts(data_dir: Path, domain: str, split: str, mode: str, header: Callable[[], str]) -> list[str]:
    """Non-blank texts of one domain's split files (:func:`~dume_exp.utils.data_layout.split_files`), one per row
    (:func:`row_text` with ``mode`` and ``header``)."""
    texts = []
    for f in split_files(data_dir, domain, split):
        for number, row in numbered_rows(f):
            try:
                text = row_text(row, mode, header)
            except ValueError as err:
                raise ValueError(f"{f}:{number}: {err}") from None
            if text.strip():
                texts.append(text)
    return texts


def calibration_texts(cfg: DictConfig, data_dir: Path, domains: list[str], tokenizer: Any) -> dict[str, list[str]]:
    """Every text of ``calibration.split`` per domain, as ``calibration.text`` says (the tokenizer's assistant
    header is derived only when a chat transcript has to be cut)."""
    header = functools.cache(functools.partial(assistant_header, tokenizer))
    return {d: domain_texts(data_dir, d, cfg.calibration.split, cfg.calibration.text, header) for d in domains}


def calibration_sample(texts: Mapping[str, list[str]], max_samples: int, seed: int) -> dict[str, list[str]]:
    """One seed's calibration texts per domain: a seeded shuffle, then the first ``max_samples``."""
    out = {}
    for d, every in texts.items():
        shuffled = list(every)
        random.Random(f"{seed}-{d}").shuffle(shuffled)
        out[d] = shuffled[:max_samples]
    return out



def calibration_record(cal: DictConfig) -> dict[str, Any]:
    """``results["calibration"]``: what the tables say about the router data."""
    return {"split": str(cal.split), "max_samples": cal.max_samples, "eval_split_leak": cal.split == "test",
            "text": str(cal.text), "mask_padding": cal.mask_padding}

