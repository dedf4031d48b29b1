"""``python -m dume_exp.dynamic add|remove``: add an expert to, or remove one from, a saved DUME model folder
(:mod:`dume_exp.method.dynamic`); the output folder is replaced atomically (:func:`~dume_exp.utils.folders.replace_folder`)."""
from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
from typing import Any

from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from ..method.dynamic import add_expert, remove_expert
from ..method.router_statistics import Batch, RouterStatistics, text_batches
from ..method.upcycle import load_upcycled
from ..utils.folders import check_replaceable, recover_interrupted_update, replace_folder

STATS_FILE = "router_statistics.safetensors"


def _save(model: PreTrainedModel, stats: RouterStatistics, tokenizer: Any, folder: Path) -> None:
    """The model folder the CLI writes: weights, config and tokenizer (``save_pretrained``) and the statistics."""
    model.save_pretrained(folder, tokenizer=tokenizer)
    stats.save(folder / STATS_FILE)


def _text_batches(tokenizer: Any, path: Path, max_len: int, batch_size: int = 8, max_samples: int = 2048) -> list[Batch]:
    """The calibration batches of a JSONL file of ``{"text": ...}`` rows (its first ``max_samples`` rows)."""
    texts = [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()][:max_samples]
    if not texts:
        raise ValueError(f"{path} has no rows with a 'text' field; calibration data cannot be empty.")
    return text_batches(tokenizer, texts, max_len, batch_size)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dume_exp.dynamic", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="op", required=True)
    for op in ("add", "remove"):
        p = sub.add_parser(op)
        p.add_argument("--model", required=True, type=Path, help=f"saved DUME model folder (with {STATS_FILE})")
        p.add_argument("--out", required=True, type=Path, help="output folder for the new model")
        p.add_argument("--lam", type=float, default=1e-2)
        p.add_argument("--max-tokens", type=int, default=1024)
        p.add_argument("--no-normalize", action="store_true")
        if op == "add":
            p.add_argument("--expert", required=True, help="dense expert (folder or hub id) to add")
            p.add_argument("--name", required=True)
            p.add_argument("--data", required=True, type=Path, help="the new expert's calibration JSONL (rows {'text'})")
        else:
            p.add_argument("--expert", required=True, help="name of the expert to remove")
            p.add_argument("--removed-model", help="the dense expert being removed (re-averages the backbone)")
    args = parser.parse_args(argv)
    for folder in (args.model, args.out):
        recover_interrupted_update(folder)
    try:
        check_replaceable(args.out)
    except FileExistsError as err:
        raise SystemExit(str(err)) from None
    stats_path = args.model / STATS_FILE
    if not stats_path.exists():
        raise SystemExit(f"{stats_path} is missing: save the statistics next to the model "
                         f"(stats.save(folder / {STATS_FILE!r})).")
    model, stats = load_upcycled(args.model), RouterStatistics.load(stats_path)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    common = dict(lam=args.lam, normalize=not args.no_normalize, max_tokens_per_sequence=args.max_tokens)
    if args.op == "add":
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        expert = AutoModelForCausalLM.from_pretrained(args.expert, dtype=next(model.parameters()).dtype)
        batches = _text_batches(tokenizer, args.data, args.max_tokens)
        stats = add_expert(model, stats, expert, batches, args.name, tokenizer=tokenizer, **common)
    else:
        removed = AutoModelForCausalLM.from_pretrained(args.removed_model) if args.removed_model else None
        stats = remove_expert(model, stats, args.expert, removed_model=removed, **common)
    replace_folder(args.out, functools.partial(_save, model, stats, tokenizer))
    print(f"wrote {args.out}: experts {stats.expert_names}")

