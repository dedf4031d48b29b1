"""Multilingual domain: ARC-schema "true continuation" items and training text from the Debian Handbook.

Each item shows the start of a held-out handbook paragraph; the four choices are its true continuation and the
continuations (same length, same language) of three other held-out paragraphs. The handbook is a parallel text,
so the split is by page: pages that give test items give no training text in any language.

Training chats ask for a paragraph's continuation in the prompt lm-eval's ARC config renders
(``Question: <first words>\nAnswer:``), the context the evaluation scores the choices in. (Tuned on a
"Continue the text:" prompt instead, the expert scored 0.400 against the base's 0.383: no better than noise.)
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from random import Random

from tqdm.auto import tqdm

from ...utils.data_layout import set_file
from ..html_text import html_paragraphs
from ..sources import fetch_deb
from .common import DataBuildContext, DomainData, assert_disjoint, chat, derive_seed, take_chars

HANDBOOK = "debian-handbook"
HANDBOOK_VERSION = "11.20220922"  # checked against the fetched .deb's name
HTML_DIR = Path("usr/share/doc/debian-handbook/html")
LOCALES = {"de": "de-DE", "es": "es-ES", "fr": "fr-FR", "it": "it-IT", "pt": "pt-BR", "nl": "nl-NL", "ru": "ru-RU"}
LABELS = ("A", "B", "C", "D")
MIN_PARAGRAPH_CHARS = 200


@dataclass(frozen=True)
class Paragraph:
    page: str
    text: str


def language_paragraphs(pages: dict[str, str], lang: str) -> list[Paragraph]:
    """Distinct paragraphs (≥ MIN_PARAGRAPH_CHARS) of ``pages`` (name -> html) that seeded langdetect calls ``lang``.

    Translations of the handbook are incomplete, so many pages of a locale still hold English paragraphs.
    """
    from langdetect import DetectorFactory, detect

    DetectorFactory.seed = 0
    out, seen = [], set()
    for page in sorted(pages):
        for text in html_paragraphs(pages[page]):
            if len(text) >= MIN_PARAGRAPH_CHARS and text not in seen and detect(text) == lang:
                seen.add(text)
                out.append(Paragraph(page, text))
    return out


def split_pages(by_lang: dict[str, list[Paragraph]], per_language: int, seed: int) -> set[str]:
    """Test pages: a seeded shuffle of all pages, taken until every language has ``per_language`` paragraphs."""
    pages = sorted({p.page for paras in by_lang.values() for p in paras})
    Random(seed).shuffle(pages)
    held: set[str] = set()
    counts = dict.fromkeys(by_lang, 0)
    for page in pages:
        if min(counts.values()) >= per_language:
            return held
        held.add(page)
        for lang, paras in by_lang.items():
            counts[lang] += sum(p.page == page for p in paras)
    if min(counts.values()) < per_language:
        raise ValueError(f"Not enough handbook paragraphs for {per_language} test items per language: {counts}.")
    return held


def continuation_items(paragraphs: Sequence[Paragraph], lang: str, n: int, prefix_words: int,
                       choice_words: int, seed: int) -> list[dict]:
    """``n`` ARC-schema items: a paragraph's first words; choices: its next ``choice_words`` words and the same span
    of 3 other held-out paragraphs (same language)."""
    rng = Random(seed)
    usable = [p for p in paragraphs if len(p.text.split()) >= 12 + choice_words]
    if len(usable) < max(n, 4):
        raise ValueError(f"{lang}: {len(usable)} usable held-out paragraphs, {n} items requested (at least 4).")
    splits = []
    for p in usable:
        words = p.text.split()
        cut = min(prefix_words, len(words) - choice_words)
        splits.append((p, " ".join(words[:cut]), " ".join(words[cut:cut + choice_words])))
    items = []
    for i, (p, question, truth) in enumerate(rng.sample(splits, n)):
        others = sorted({c for q, _, c in splits if q is not p and c != truth})
        if len(others) < 3:
            raise ValueError(f"{lang}: fewer than 3 distinct distractor continuations for {p.page}.")
        choices = rng.sample(others, 3) + [truth]
        rng.shuffle(choices)
        items.append({
            "id": f"handbook-{lang}-{Path(p.page).stem}-{i}",
            "question": question,
            "choices": {"text": choices, "label": list(LABELS)},
            "answerKey": LABELS[choices.index(truth)],
        })
    return items


def question_prompt(prefix: str) -> str:
    """The user turn of a continuation chat: ``prefix`` as the evaluation renders an ARC question."""
    from ...evaluation.tasks.arc import render_question

    return render_question(prefix)


def training_chats(paragraphs: Iterable[Paragraph], budget: int, seed: int) -> list[str]:
    """Continuation chats (user: a paragraph's first third, assistant: the rest), seeded order, ``budget`` chars."""
    paras = list(paragraphs)
    Random(seed).shuffle(paras)

    def chats() -> Iterable[str]:
        for p in paras:
            words = p.text.split()
            cut = max(8, len(words) // 3)
            yield chat(question_prompt(" ".join(words[:cut])), " ".join(words[cut:]))

    return take_chars(chats(), budget)


def _opening(text: str) -> str:
    """The first words of a paragraph: the key that keeps near-duplicates of test paragraphs out of training."""
    return " ".join(text.split()[:8])


def read_pages(handbook_root: Path, locale: str) -> dict[str, str]:
    folder = handbook_root / HTML_DIR / locale
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is missing: the {HANDBOOK} package has no {locale} translation.")
    return {f.name: f.read_text(encoding="utf-8") for f in sorted(folder.glob("*.html"))}


def build(ctx: DataBuildContext) -> DomainData:
    """``arc_<lang>_test.jsonl`` per language and continuation-chat training text from the other handbook pages."""
    sizes = ctx.sizes
    unknown = set(sizes.arc_languages) - set(LOCALES)
    if unknown:
        raise ValueError(f"No handbook locale for {sorted(unknown)}; choose among {sorted(LOCALES)}.")
    root = fetch_deb(HANDBOOK, root=ctx.root)
    deb = (root.parent / "PACKAGE").read_text().strip()
    if f"_{HANDBOOK_VERSION}_" not in deb:
        raise RuntimeError(f"apt fetched {deb}, not {HANDBOOK} {HANDBOOK_VERSION}: update HANDBOOK_VERSION "
                           f"(a new version changes the data) and delete {root.parent} to refetch.")
    langs = list(sizes.arc_languages)
    by_lang = {lang: language_paragraphs(read_pages(root, LOCALES[lang]), lang)
               for lang in tqdm(langs, desc="handbook languages", disable=not ctx.progress)}
    held = split_pages(by_lang, sizes.arc_per_language, derive_seed(ctx.seed, "multilingual", "pages"))
    test_paras = [p for lang in langs for p in by_lang[lang] if p.page in held]
    test_openings = {_opening(p.text) for p in test_paras}
    eval_files, train_texts = {}, []
    for lang in langs:
        items = continuation_items([p for p in by_lang[lang] if p.page in held], lang, sizes.arc_per_language,
                                   sizes.arc_prefix_words, sizes.arc_choice_words,
                                   derive_seed(ctx.seed, "multilingual", lang, "test"))
        eval_files[set_file(f"arc_{lang}")] = items
        train_paras = [p for p in by_lang[lang] if p.page not in held and _opening(p.text) not in test_openings]
        train_texts += training_chats(train_paras, sizes.train_chars // len(langs),
                                      derive_seed(ctx.seed, "multilingual", lang, "train"))
    Random(derive_seed(ctx.seed, "multilingual", "order")).shuffle(train_texts)
    head = question_prompt("\x00").split("\x00")[0]  # the prompt's text before the question
    assert_disjoint(train_texts, [head + o for o in test_openings], "multilingual")
    return DomainData(
        train_texts=train_texts,
        eval_files=eval_files,
        sources={f"{HANDBOOK} (Debian)": deb, "langdetect": version("langdetect")},
        licence="debian-handbook: GPL-2.0+ or CC-BY-SA-3.0 (debian/copyright)",
        notes={"held_out_pages": sorted(held), "languages": langs},
    )
