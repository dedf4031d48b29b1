"""Shared pieces of the reasoning-data builders: ChatML text, seeds, budgets, disjointness, sizes, context."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHATML = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n{response}<|im_end|>\n"


def chat(prompt: str, response: str, prefix: str = "") -> str:
    """One user/assistant exchange with the tokenizer-independent ChatML markers.

    ``prefix`` opens the assistant turn as an evaluation's generation prefix would; the trainer tokenises
    it apart from ``response`` (:data:`~dume_exp.zoo.train.TOKEN_BREAK`), as the harness does.
    """
    from ..train import TOKEN_BREAK

    response = f"{prefix}{TOKEN_BREAK}{response}" if prefix else response
    return CHATML.format(prompt=prompt, response=response)


def derive_seed(seed: int, *labels: str) -> int:
    """A 32-bit seed for one named use of the run seed (e.g. ``derive_seed(0, "math", "test")``)."""
    blob = json.dumps([seed, *labels]).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big")


def take_chars(texts: Iterable[str], budget: int) -> list[str]:
    """The first texts whose total length reaches ``budget`` characters (all of them if it never does)."""
    out, total = [], 0
    for text in texts:
        if total >= budget:
            break
        out.append(text)
        total += len(text)
    return out


def interleave(streams: Mapping[str, Iterator[str]], budgets: Mapping[str, int]) -> list[str]:
    """Round-robin over named text streams, each until its own character budget is spent."""
    out: list[str] = []
    left = dict(budgets)
    live = [name for name in streams if left[name] > 0]
    while live:
        for name in list(live):
            text = next(streams[name], None)
            if text is None:
                raise ValueError(f"Training stream {name!r} ran dry with {left[name]} characters still wanted.")
            out.append(text)
            left[name] -= len(text)
            if left[name] <= 0:
                live.remove(name)
    return out


def assert_disjoint(train: Iterable[str], test: Iterable[str], what: str) -> None:
    """Raise if any test item's text occurs (as a substring) in the training texts."""
    blob = "\x00".join(train)
    leaked = [t for t in test if t in blob]
    if leaked:
        raise AssertionError(f"{len(leaked)} {what} test item(s) occur in the training text, "
                             f"e.g. {leaked[0][:200]!r}.")


@dataclass
class DomainData:
    """What one domain builder returns: training texts, evaluation files (name -> rows) and provenance."""

    train_texts: list[str]
    eval_files: dict[str, list[dict]]
    sources: dict[str, str]
    licence: str
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReasoningSizes:
    """Item counts and training budget of the reasoning data (all part of the cache recipe).

    Evaluation of one model over the four domains must stay cheap on a CPU, so test sets are small;
    ``train_chars`` is the training-text budget per domain.
    """

    gsm_test: int = 150
    gsm_fewshot: int = 50
    asdiv_test: int = 150
    arithmetic_test: int = 150
    arc_languages: tuple[str, ...] = ("de", "es", "fr", "it", "pt")
    arc_per_language: int = 40
    arc_prefix_words: int = 30
    arc_choice_words: int = 10
    standin_test: int = 100
    ifeval_test: int = 120
    train_chars: int = 450_000


@dataclass(frozen=True)
class DataBuildContext:
    """Everything a domain's data builder needs: sizes, the run seed, the fetch cache root and a progress switch."""

    sizes: ReasoningSizes
    seed: int
    root: Path
    progress: bool = True
    nltk_data: Path | None = None
