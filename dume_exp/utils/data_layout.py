"""The on-disk layout of domain data, shared by the zoo's builders, the evaluation suites and the calibration,
and the domains of the embedded zoo's settings.

A data folder holds one folder per domain of JSON-lines files (one JSON object a line, UTF-8)::

    <data_dir>/<domain>/train.jsonl, validation.jsonl, test.jsonl   the splits
    <data_dir>/<domain>/<name>_<split>.jsonl                        named sets, e.g. gsm8k_test.jsonl, arc_de_test.jsonl

Named test sets belong to the test split; a named train set (``gsm8k_train.jsonl``) is a few-shot source, not
training data.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .cache import atomic_file

#: The domains of the embedded zoo's settings, in order (its data folders, experts and evaluation suites).
CLM_DOMAINS: tuple[str, ...] = ("code", "math", "biomedical", "legal", "german")
REASONING_DOMAINS: tuple[str, ...] = ("math", "multilingual", "coding", "instruction")
SETTING_DOMAINS: dict[str, tuple[str, ...]] = {"clm": CLM_DOMAINS, "reasoning": REASONING_DOMAINS}

SPLITS = ("train", "validation", "test")
SUFFIX = ".jsonl"
#: The file-name patterns of each split's files in a domain folder.
SPLIT_PATTERNS = {split: (f"{split}{SUFFIX}",) for split in SPLITS} | {"test": (f"test{SUFFIX}", f"*_test{SUFFIX}")}


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
    return split


def split_file(split: str) -> str:
    """File name of a split, e.g. ``train.jsonl``."""
    return f"{_check_split(split)}{SUFFIX}"


def set_file(name: str, split: str = "test") -> str:
    """File name of the named set ``name`` of a split, e.g. ``gsm8k_test.jsonl``."""
    return f"{name}_{_check_split(split)}{SUFFIX}"


def split_path(data_dir: str | Path, domain: str, split: str) -> Path:
    """``<data_dir>/<domain>/<split>.jsonl``."""
    return Path(data_dir) / domain / split_file(split)


def set_path(data_dir: str | Path, domain: str, name: str, split: str = "test") -> Path:
    """``<data_dir>/<domain>/<name>_<split>.jsonl``."""
    return Path(data_dir) / domain / set_file(name, split)


def set_names(data_dir: str | Path, domain: str, split: str = "test") -> list[str]:
    """Sorted names of the named sets of a domain's split that exist."""
    suffix = f"_{_check_split(split)}{SUFFIX}"
    return sorted(p.name.removesuffix(suffix) for p in (Path(data_dir) / domain).glob(f"*{suffix}"))


def split_files(data_dir: str | Path, domain: str, split: str) -> list[Path]:
    """Every file of a domain's split (the split's own file and its named sets), sorted; an error if none exists."""
    folder = Path(data_dir) / domain
    patterns = SPLIT_PATTERNS[_check_split(split)]
    files = sorted({f for pattern in patterns for f in folder.glob(pattern)})
    if not files:
        raise FileNotFoundError(f"No {split} data for domain {domain!r} under {folder} (looked for {list(patterns)}).")
    return files


def numbered_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) of every non-blank line of a JSON-lines file."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except ValueError as err:
                    raise ValueError(f"{path}:{number}: not a JSON line ({err}).") from None


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file."""
    return [row for _, row in numbered_rows(path)]


def write_rows(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> int:
    """Write rows as UTF-8 JSON lines (keys in the given order, non-ASCII kept) atomically; return the row count."""
    n = 0
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def load_split(data_dir: str | Path, domain: str, split: str) -> list[str]:
    """The ``text`` field of every row of a domain's split file."""
    path = split_path(data_dir, domain, split)
    if not path.is_file():
        data_dir = Path(data_dir)
        known = sorted(p.name for p in data_dir.iterdir() if p.is_dir()) if data_dir.is_dir() else []
        raise FileNotFoundError(f"No {path}: domains in {data_dir} are {known}. Build the data with build_clm_data() "
                                "(dume_exp.zoo.clm_data) or point to a folder in this layout.")
    return [row["text"] for row in read_rows(path)]
