"""Schema checks of the reasoning-data files (the benchmarks' own field names and types); each raises ValueError."""
from __future__ import annotations

from collections.abc import Callable

from .common import CHATML
from .gsm import gsm_final_answer
from .humaneval import HUMANEVAL_KEYS

ARC_LABELS = ["A", "B", "C", "D"]
_USER, _ASSISTANT = CHATML.split("{prompt}")[0], CHATML.split("{response}")[0].split("{prompt}")[1]


def _keys(row: dict, expected: set[str], what: str) -> None:
    if set(row) != expected:
        raise ValueError(f"{what} row has keys {sorted(row)}, expected {sorted(expected)}.")


def _strings(row: dict, keys: tuple[str, ...], what: str) -> None:
    bad = [k for k in keys if not isinstance(row[k], str) or not row[k].strip()]
    if bad:
        raise ValueError(f"{what} row fields {bad} must be non-empty strings.")


def check_train(rows: list[dict]) -> None:
    """``{"text"}`` rows, each one ChatML user/assistant exchange."""
    for row in rows:
        _keys(row, {"text"}, "train")
        text = row["text"]
        if not (text.startswith(_USER) and _ASSISTANT in text and text.endswith("<|im_end|>\n")):
            raise ValueError(f"Training text is not one ChatML exchange: {text[:120]!r}")


def check_gsm(rows: list[dict]) -> None:
    """GSM8K: ``question``, ``answer`` (worked solution ending ``#### N``)."""
    for row in rows:
        _keys(row, {"question", "answer"}, "GSM8K")
        _strings(row, ("question", "answer"), "GSM8K")
        float(gsm_final_answer(row["answer"]).replace(",", ""))


def check_arc(rows: list[dict]) -> None:
    """ARC: ``id``, ``question``, ``choices {text[4], label[A-D]}``, ``answerKey`` among the labels."""
    ids = set()
    for row in rows:
        _keys(row, {"id", "question", "choices", "answerKey"}, "ARC")
        _strings(row, ("id", "question", "answerKey"), "ARC")
        _keys(row["choices"], {"text", "label"}, "ARC choices")
        texts = row["choices"]["text"]
        if row["choices"]["label"] != ARC_LABELS or len(texts) != 4 or len(set(texts)) != 4:
            raise ValueError(f"ARC item {row['id']} needs 4 distinct choices labelled A-D.")
        if not all(isinstance(t, str) and t.strip() for t in texts) or row["answerKey"] not in ARC_LABELS:
            raise ValueError(f"ARC item {row['id']} has empty choices or answerKey {row['answerKey']!r}.")
        ids.add(row["id"])
    if len(ids) != len(rows):
        raise ValueError("ARC ids are not unique.")


def check_humaneval(rows: list[dict]) -> None:
    """HumanEval: ``task_id``, ``prompt``, ``canonical_solution``, ``test`` (defines ``check``), ``entry_point``."""
    for row in rows:
        _keys(row, set(HUMANEVAL_KEYS), "HumanEval")
        _strings(row, HUMANEVAL_KEYS, "HumanEval")
        if f"def {row['entry_point']}(" not in row["prompt"] or "def check(candidate)" not in row["test"]:
            raise ValueError(f"{row['task_id']}: prompt must define the entry point and test must define check().")
    if len({r["task_id"] for r in rows}) != len(rows):
        raise ValueError("HumanEval task_ids are not unique.")


def check_ifeval(rows: list[dict]) -> None:
    """IFEval: ``key``, ``prompt``, ``instruction_id_list``, ``kwargs`` accepted by lm-eval's instruction classes.

    Needs punkt_tab on NLTK's path (lm-eval's IFEval module looks for it at import).
    """
    from lm_eval.tasks.ifeval.instructions_registry import INSTRUCTION_DICT

    for row in rows:
        _keys(row, {"key", "prompt", "instruction_id_list", "kwargs"}, "IFEval")
        _strings(row, ("prompt",), "IFEval")
        if not isinstance(row["key"], int) or len(row["instruction_id_list"]) != len(row["kwargs"]):
            raise ValueError(f"IFEval row {row['key']}: int key and one kwargs dict per instruction needed.")
        for iid, kwargs in zip(row["instruction_id_list"], row["kwargs"]):
            inst = INSTRUCTION_DICT[iid](iid)
            if not set(kwargs) <= set(inst.get_instruction_args_keys()):
                raise ValueError(f"IFEval row {row['key']}: {iid} does not take {sorted(kwargs)}.")
            inst.build_description(**{k: v for k, v in kwargs.items() if v})
    if len({r["key"] for r in rows}) != len(rows):
        raise ValueError("IFEval keys are not unique.")


def checker_for(filename: str) -> Callable[[list[dict]], None]:
    """The schema check of one reasoning-data file, chosen by its name."""
    if filename == "train.jsonl":
        return check_train
    if filename.startswith(("gsm8k_", "asdiv_", "arithmetic_")):
        return check_gsm
    if filename.startswith("arc_"):
        return check_arc
    if filename.endswith("humaneval_test.jsonl"):
        return check_humaneval
    if filename.startswith("ifeval_"):
        return check_ifeval
    raise ValueError(f"No schema check for {filename!r}.")
