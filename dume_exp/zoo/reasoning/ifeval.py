"""Instruction domain: synthetic IFEval-schema prompts from lm-eval's instruction registry, verified training chats.

A prompt is a writing task about a topic followed by 1-3 mutually compatible instruction descriptions produced by
the registry classes' ``build_description`` (seeded ``random``). Training responses are assembled so that they
satisfy every instruction by construction (paragraphs, bullets, sections, keywords, case, wrapping, ...), then
checked with lm-eval's own strict scorer; only responses that pass are kept. Test topics and seeds are disjoint
from training ones, and test prompts use only instruction types that occur in the training set.
"""
from __future__ import annotations

import contextlib
import functools
import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from random import Random

from tqdm.auto import tqdm

from ...utils.data_layout import set_file
from .common import DataBuildContext, DomainData, assert_disjoint, chat, derive_seed
from .punkt import nltk_search_path

TASKS = (
    "Write a short blog post about {topic}.",
    "Write a brief essay on {topic}.",
    "Write a letter to a friend about {topic}.",
    "Write a note for a school newsletter about {topic}.",
    "Give some practical advice about {topic}.",
    "Explain {topic} to a ten-year-old.",
    "Write a short speech about {topic}.",
    "Describe {topic} to someone who has never heard of it.",
    "Write a short social media post about {topic}.",
    "Summarize why people care about {topic}.",
)
QUESTION_TASK = "Is {topic} worth the time it takes?"
TOPICS = (
    "urban gardening", "the history of tea", "learning a second language", "bird watching", "home composting",
    "public libraries", "morning routines", "board games", "night skies", "bicycle repair", "baking bread",
    "saving money", "volunteering", "river cleanups", "old maps", "rainy days", "street food", "chess openings",
    "desert plants", "winter camping", "handwritten letters", "train travel", "honey bees", "kite flying",
    "pottery", "local museums", "vegetable soup", "jazz music", "mountain hiking", "paper airplanes",
    "recycling plastic", "knitting", "community radio", "city parks", "photography walks", "sleep habits",
    "family recipes", "sea turtles", "solar panels", "science fairs", "folk tales", "puzzle solving",
    "running clubs", "tree planting", "tide pools", "letter writing", "wildflowers", "lighthouses",
    "weekend markets", "sign language", "origami", "rock collecting", "cloud shapes", "school gardens",
    "reading aloud", "mushroom foraging", "ice skating", "lunch boxes", "road trips", "houseplants",
    "weather forecasts", "model trains", "poetry nights", "public transport", "quiet mornings", "fresh herbs",
    "dog walking", "stargazing apps", "ancient bridges", "second-hand books", "clay sculpture", "spice blends",
    "desk organization", "birthday traditions", "fruit orchards", "window boxes", "penguins", "glass recycling",
    "hand tools", "canoe trips", "marathon training", "coastal erosion", "village festivals", "tiny houses",
    "sourdough starters", "wind farms", "street art", "garden ponds", "memory games", "picnic planning",
)
FILLER = (
    "{T} is a subject that many people find worth exploring.",
    "There is always something new to learn about {t}.",
    "A good first step is to spend a little time on {t} every day.",
    "People often discover {t} through friends or family.",
    "Small habits can make {t} part of everyday life.",
    "Patience matters a great deal when it comes to {t}.",
    "The best part of {t} is how it brings people together.",
    "Many beginners worry too much about making mistakes.",
    "Practice and curiosity go a long way.",
    "It helps to set a simple goal and keep track of progress.",
    "Local groups and libraries are great places to start.",
    "Over time the effort pays off in surprising ways.",
    "Sharing what you learn makes the experience richer.",
    "Some of the most useful tips come from everyday experience.",
    "Each season shows a different side of {t}.",
    "Talking with others about {t} can spark new ideas.",
    "The story behind {t} is richer than most people expect.",
    "A calm and steady approach usually works best.",
    "There is no single right way to enjoy {t}.",
    "Even a few minutes a week can make a difference.",
    "Good tools help but they are not the whole story.",
    "Most people remember their first experience with {t}.",
    "Planning ahead saves time and avoids frustration.",
    "Asking questions is the fastest way to improve.",
    "The rewards of {t} are easy to underestimate.",
)
KEYWORD_SENTENCES = ("It is worth mentioning {w} here.", "The word {w} fits this topic well.",
                     "Think about {w} for a moment.", "Some people connect this with {w}.")
PLACEHOLDERS = ("name", "address", "date", "phone number", "city", "email", "school", "time")
CAPITAL_WORDS = ("KEY", "NOTE", "GREAT", "FOCUS", "ALWAYS", "SIMPLE", "CLEAR", "FUN", "REAL", "TRY", "NOW", "BEST")
UNSUPPORTED = ("language:response_language",)  # needs non-English text; not constructed here


@dataclass
class Plan:
    """Response requirements gathered from an instruction list (ids with their kwargs)."""

    topic: str
    blocks: int = 1
    joiner: str = "\n\n"
    section: tuple[str, int] | None = None
    first_word: tuple[int, str] | None = None
    bullets: int = 0
    highlights: int = 0
    placeholders: int = 0
    keywords: list[str] = field(default_factory=list)
    avoid: list[str] = field(default_factory=list)
    letter: str | None = None
    letter_at_least: int = 0
    capitals: int = 0
    title: bool = False
    postscript: str | None = None
    end_phrase: str | None = None
    constrained: bool = False
    json: bool = False
    two: bool = False
    repeat: str | None = None
    no_comma: bool = False
    case: str | None = None
    quote: bool = False
    fill: int = 4


def make_plan(topic: str, instructions: list[tuple[str, dict]]) -> Plan:
    """Translate (instruction id, kwargs) pairs into a Plan (the default filler length follows length constraints)."""
    plan = Plan(topic=topic)
    for iid, kw in instructions:
        name = iid.split(":")[1]
        if name == "number_paragraphs":
            plan.blocks, plan.joiner = kw["num_paragraphs"], "\n\n***\n\n"
        elif name == "nth_paragraph_first_word":
            plan.blocks, plan.joiner = kw["num_paragraphs"], "\n\n"
            plan.first_word = (kw["nth_paragraph"], kw["first_word"])
        elif name == "multiple_sections":
            plan.section = (kw["section_spliter"], kw["num_sections"])
        elif name == "number_bullet_lists":
            plan.bullets = kw["num_bullets"]
        elif name == "number_highlighted_sections":
            plan.highlights = kw["num_highlights"]
        elif name == "number_placeholders":
            plan.placeholders = kw["num_placeholders"]
        elif name == "existence":
            plan.keywords += list(kw["keywords"])
        elif name == "frequency":
            if kw["relation"] == "at least":
                plan.keywords += [kw["keyword"]] * kw["frequency"]
            else:
                plan.avoid.append(kw["keyword"])
        elif name == "forbidden_words":
            plan.avoid += list(kw["forbidden_words"])
        elif name == "letter_frequency":
            plan.letter = kw["letter"]
            plan.letter_at_least = kw["let_frequency"] if kw["let_relation"] == "at least" else 0
        elif name == "capital_word_frequency":
            plan.capitals = kw["capital_frequency"] if kw["capital_relation"] == "at least" else 0
        elif name == "number_words":
            plan.fill = max(1, kw["num_words"] // 9 + 1 if kw["relation"] == "at least" else kw["num_words"] // 14)
        elif name == "number_sentences":
            n = kw["num_sentences"]
            plan.fill = n if kw["relation"] == "at least" else max(1, n - 4)
        elif name == "title":
            plan.title = True
        elif name == "postscript":
            plan.postscript = kw["postscript_marker"]
        elif name == "end_checker":
            plan.end_phrase = kw["end_phrase"]
        elif name == "constrained_response":
            plan.constrained = True
        elif name == "json_format":
            plan.json = True
        elif name == "two_responses":
            plan.two = True
        elif name == "repeat_prompt":
            plan.repeat = kw["prompt_to_repeat"]
        elif name == "no_comma":
            plan.no_comma = True
        elif name in ("english_lowercase", "english_capital"):
            plan.case = "lower" if name == "english_lowercase" else "upper"
        elif name == "quotation":
            plan.quote = True
        else:
            raise ValueError(f"No response construction for instruction {iid!r}.")
    plan.fill = max(plan.fill, plan.blocks, plan.section[1] if plan.section else 0)
    return plan


def _mentions(text: str, words: list[str]) -> bool:
    return any(re.search(re.escape(w), text, flags=re.IGNORECASE) for w in words)


def _with_sections(blocks: list[list[str]], splitter: str, count: int) -> list[str]:
    """Block texts with ``count`` numbered section headers spread over the blocks (a block may hold several)."""
    per_block = [count // len(blocks) + (b < count % len(blocks)) for b in range(len(blocks))]
    texts, number = [], 1
    for block, n in zip(blocks, per_block):
        if n == 0:
            texts.append(" ".join(block))
            continue
        chunks = [block[i::n] for i in range(n)]
        texts.append("\n".join(f"{splitter} {number + i}\n{' '.join(c)}" for i, c in enumerate(chunks)))
        number += n
    return texts


def render(plan: Plan, fill: int, rng: Random) -> str:
    """One response for ``plan`` with ``fill`` filler sentences (``rng`` only orders the filler and picks options)."""
    t = plan.topic
    pool = [s.format(t=t, T=t[0].upper() + t[1:]) for s in FILLER]
    pool = [s for s in pool if not _mentions(s, plan.avoid)] or pool
    if plan.letter and not plan.letter_at_least:
        pool.sort(key=lambda s: s.lower().count(plan.letter))
        pool = pool[: max(3, len(pool) // 3)]
    rng.shuffle(pool)

    def body(offset: int) -> str:
        sentences = [pool[(offset + i) % len(pool)] for i in range(fill)]
        sentences += [rng.choice(KEYWORD_SENTENCES).format(w=w) for w in plan.keywords]
        if plan.placeholders:
            slots = " and ".join(f"[{p}]" for p in PLACEHOLDERS[: plan.placeholders])
            sentences.append(f"Fill in {slots} below.")
        if plan.letter_at_least:
            from lm_eval.tasks.ifeval.instructions_util import WORD_LIST

            letter_words = [w for w in WORD_LIST if plan.letter in w and not _mentions(w, plan.avoid)][:40]
            picked, count = [], 0
            while count < plan.letter_at_least and letter_words:
                word = letter_words[len(picked) % len(letter_words)]
                picked.append(word)
                count += word.count(plan.letter)
            sentences.append("Related words include " + " ".join(picked) + ".")
        if plan.capitals:
            sentences.append("Remember these words: " + " ".join(CAPITAL_WORDS[i % len(CAPITAL_WORDS)]
                                                                  for i in range(plan.capitals)) + ".")
        for k in range(plan.highlights):  # highlight inside a sentence: a line starting with * counts as a bullet
            if k == len(sentences):
                sentences.append(pool[(offset + fill + plan.bullets + k) % len(pool)])
            head, tail = sentences[k].split(" ", 1)
            sentences[k] = f"{head} *{tail.rstrip('.')}*."
        blocks = [sentences[i::plan.blocks] for i in range(plan.blocks)]
        texts = _with_sections(blocks, *plan.section) if plan.section else [" ".join(b) for b in blocks]
        if plan.first_word:
            nth, word = plan.first_word
            glue = "\n" if plan.section else " "
            texts[nth - 1] = f"{word.capitalize()} comes to mind when thinking about {t}.{glue}{texts[nth - 1]}"
        if plan.bullets:
            texts[-1] += "\n" + "\n".join(f"* {pool[(offset + fill + i) % len(pool)]}" for i in range(plan.bullets))
        return plan.joiner.join(texts)

    if plan.constrained:
        text = f"My answer is {rng.choice(('yes', 'no', 'maybe'))}."
    elif plan.two:
        text = body(0) + "\n******\n" + body(len(pool) // 2)
    else:
        text = body(0)
    outer = "\n" if plan.first_word else "\n\n"
    if plan.title:
        text = f"<<{t.title()}>>{outer}{text}"
    if plan.repeat:
        text = f"{plan.repeat}{outer}{text}"
    if plan.postscript:
        text += f"{outer}{plan.postscript} Thanks for reading about {t}."
    if plan.end_phrase:
        text += f"{outer if not plan.first_word else ' '}{plan.end_phrase}"
    if plan.json:
        text = json.dumps({"topic": t, "answer": text}, indent=2)
        text = f"```json\n{text}\n```" if rng.random() < 0.5 else text
    if plan.no_comma:
        text = text.replace(",", "")
    if plan.case == "lower":
        text = text.lower()
    elif plan.case == "upper":
        text = text.upper()
    return f'"{text}"' if plan.quote else text


def follows_all(prompt: str, instructions: list[tuple[str, dict]], response: str) -> bool:
    """lm-eval's strict IFEval check: does ``response`` follow every instruction of the prompt?"""
    from lm_eval.tasks.ifeval.utils import InputExample, test_instruction_following_strict

    ids, kwargs = zip(*instructions)
    example = InputExample(key=0, instruction_id_list=list(ids), prompt=prompt, kwargs=list(kwargs))
    return test_instruction_following_strict(example, response).follow_all_instructions


def construct_response(prompt: str, topic: str, instructions: list[tuple[str, dict]], rng: Random) -> str | None:
    """A response that passes lm-eval's strict check, searching the filler length around the plan's default."""
    plan = make_plan(topic, instructions)
    state = rng.getstate()
    for delta in (0, 1, -1, 2, -2, 3, -3, 5, -5, 8, -8, 12, 16, 24):
        fill = plan.fill + delta
        if fill < plan.blocks or fill > 60:
            continue
        rng.setstate(state)
        response = render(plan, fill, rng)
        if follows_all(prompt, instructions, response):
            return response
    return None


# Instruction arguments drawn here instead of by the registry class: keeps responses short (a CPU budget) and
# avoids the registry's unsatisfiable draws (nth_paragraph may exceed num_paragraphs).
ARG_SAMPLERS: dict[str, Callable[[Random], dict]] = {
    "length_constraints:number_words": lambda r: {"num_words": r.randint(20, 120)},
    "length_constraints:number_sentences": lambda r: {"num_sentences": r.randint(2, 10)},
    "length_constraints:nth_paragraph_first_word": lambda r: (
        lambda n: {"num_paragraphs": n, "nth_paragraph": r.randint(1, n)})(r.randint(2, 4)),
}


@functools.cache
def conflicts() -> dict[str, frozenset[str]]:
    """lm-eval's instruction conflict table, made symmetric."""
    from lm_eval.tasks.ifeval.instructions_registry import INSTRUCTION_CONFLICTS

    table = {k: set(v) | {k} for k, v in INSTRUCTION_CONFLICTS.items()}
    for key, others in list(table.items()):
        for other in others:
            table.setdefault(other, {other}).add(key)
    return {k: frozenset(v) for k, v in table.items()}


def supported_ids() -> list[str]:
    from lm_eval.tasks.ifeval.instructions_registry import INSTRUCTION_DICT

    return sorted(i for i in INSTRUCTION_DICT if i not in UNSUPPORTED)


def make_prompt(topic: str, ids: list[str], rng: Random) -> tuple[str, list[tuple[str, dict]]]:
    """A prompt (task + instruction descriptions) and its (id, kwargs) list; registry draws use global ``random``."""
    from lm_eval.tasks.ifeval.instructions_registry import INSTRUCTION_DICT

    constrained = "detectable_format:constrained_response" in ids
    base = (QUESTION_TASK if constrained else rng.choice(TASKS)).format(topic=topic)
    descriptions, instructions = [], []
    for iid in ids:
        inst = INSTRUCTION_DICT[iid](iid)
        if iid == "combination:repeat_prompt":
            given = {"prompt_to_repeat": base}
        else:
            given = ARG_SAMPLERS[iid](rng) if iid in ARG_SAMPLERS else {}
        descriptions.append(inst.build_description(**given))
        instructions.append((iid, inst.get_instruction_args() or {}))
    return " ".join([base, *descriptions]), instructions


def pick_ids(pool: list[str], rng: Random) -> list[str]:
    """1-3 mutually compatible instruction ids (constrained_response always alone)."""
    table = conflicts()
    want = rng.choices((1, 2, 3), weights=(0.4, 0.4, 0.2))[0]
    picked: list[str] = []
    for iid in rng.sample(pool, len(pool)):
        if len(picked) == want:
            break
        if all(iid not in table.get(p, ()) and p not in table.get(iid, ()) for p in picked):
            picked.append(iid)
    return picked


@contextlib.contextmanager
def seeded_random(seed: int) -> Iterator[None]:
    """Seed the global ``random`` (used by lm-eval's instruction classes) and langdetect; restore ``random`` after."""
    from langdetect import DetectorFactory

    state = random.getstate()
    random.seed(seed)
    DetectorFactory.seed = 0
    try:
        yield
    finally:
        random.setstate(state)


def training_rows(topics: list[str], budget: int, seed: int, progress: bool = False) -> tuple[list[dict], Counter]:
    """Verified chat rows (text, instruction ids) until ``budget`` characters, and the attempt count per id."""
    rng, rows, tried, total = Random(seed), [], Counter(), 0
    pool = supported_ids()
    bar = tqdm(total=budget, desc="instruction training", disable=not progress, unit="char")
    with seeded_random(seed), bar:
        while total < budget:
            topic = rng.choice(topics)
            prompt, instructions = make_prompt(topic, pick_ids(pool, rng), rng)
            tried.update(i for i, _ in instructions)
            response = construct_response(prompt, topic, instructions, rng)
            if response is None:
                continue
            text = chat(prompt, response)
            rows.append({"text": text, "ids": [i for i, _ in instructions]})
            total += len(text)
            bar.update(len(text))
    return rows, tried


def evaluation_rows(topics: list[str], n: int, pool: list[str], seed: int) -> list[dict]:
    """``n`` IFEval-schema rows (key, prompt, instruction_id_list, kwargs) over ``pool`` instruction types."""
    rng, rows = Random(seed), []
    with seeded_random(seed):
        for key in range(n):
            topic = rng.choice(topics)
            prompt, instructions = make_prompt(topic, pick_ids(pool, rng), rng)
            rows.append({"key": key, "prompt": prompt, "instruction_id_list": [i for i, _ in instructions],
                         "kwargs": [kw for _, kw in instructions]})
    return rows


def split_topics(seed: int, test_share: float = 0.4) -> tuple[list[str], list[str]]:
    """(train, test) topics: a seeded shuffle of TOPICS cut at ``test_share``."""
    topics = list(TOPICS)
    Random(seed).shuffle(topics)
    cut = int(len(topics) * test_share)
    return topics[cut:], topics[:cut]


def build(ctx: DataBuildContext) -> DomainData:
    """``ifeval_test.jsonl`` and verified instruction-following training chats (needs ``ctx.nltk_data``)."""
    if ctx.nltk_data is None:
        raise ValueError("The instruction domain needs punkt_tab: pass "
                         "DataBuildContext(nltk_data=build_punkt_tab(...)).")
    train_topics, test_topics = split_topics(derive_seed(ctx.seed, "instruction", "topics"))
    with nltk_search_path(Path(ctx.nltk_data)):
        rows, tried = training_rows(train_topics, ctx.sizes.train_chars,
                                    derive_seed(ctx.seed, "instruction", "train"), progress=ctx.progress)
        kept = Counter(i for row in rows for i in row["ids"])
        test = evaluation_rows(test_topics, ctx.sizes.ifeval_test, sorted(kept),
                               derive_seed(ctx.seed, "instruction", "test"))
    train_texts = [row["text"] for row in rows]
    assert_disjoint(train_texts, [r["prompt"] for r in test], "instruction")
    return DomainData(
        train_texts=train_texts,
        eval_files={set_file("ifeval"): test},
        sources={"lm-eval (IFEval instruction registry and scorer)": version("lm_eval")},
        licence="lm-eval IFEval code: Apache-2.0; prompts and responses: generated here",
        notes={"instruction_types": sorted(kept),
               "train_pass_rate": {i: round(kept[i] / tried[i], 3) for i in sorted(tried)},
               "unsupported": list(UNSUPPORTED), "test_topics": len(test_topics), "train_topics": len(train_topics)},
    )
