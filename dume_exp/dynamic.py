"""Dynamic experts: add an expert to, or remove one from, an existing DUME model without retraining.

The backbone of a D-expert model is the mean of D experts' backbones, so adding expert e gives
``(D·mean + e)/(D+1)`` and removing it ``(D·mean − e)/(D−1)`` without the other experts' weights.
Routers are re-solved from the statistics. ``mode="fast"`` reuses the stored statistics of the
experts already there (collected under the previous backbone) and runs forward passes only for the
new expert; ``mode="exact"`` recollects every expert's statistics under the new backbone.

CLI: ``python -m dume_exp.dynamic add|remove --help``.
"""
from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .moe import require_moe_blocks
from .ridge import fit_routers
from .statistics import RouterStatistics, collect_statistics
from .upcycle import (CONFIG_KEY, check_compatible, decoder_layers, dense_view, load_upcycled, shared_vocab_rows,
                      truncate_vocab)

Batches = Sequence[Mapping[str, torch.Tensor]]
MODES = ("fast", "exact")
STATS_FILE = "router_statistics.safetensors"


def _shift_backbone(model: nn.Module, expert: nn.Module, num_before: int, sign: int) -> None:
    """Mean over ``num_before`` experts → mean with ``expert`` added (sign=+1) or taken out (sign=−1)."""
    inside = {id(p) for b in require_moe_blocks(model) for p in b.parameters()}
    source = dict(expert.named_parameters())
    num_after = num_before + sign
    with torch.no_grad():
        for name, p in model.named_parameters():
            if id(p) in inside:
                continue
            new = (p.double() * num_before + sign * source[name][: p.shape[0]].double()) / num_after
            p.copy_(new.to(p.dtype))


def _resize_routers(model: nn.Module, keep: Sequence[int], extra: int) -> None:
    """Routers for experts ``keep`` (in that order) plus ``extra`` new rows (refit afterwards)."""
    for block in require_moe_blocks(model):
        old = block.router
        new = nn.Linear(old.in_features, len(keep) + extra, bias=True).to(old.weight)
        with torch.no_grad():
            new.weight[: len(keep)] = old.weight[list(keep)]
            new.bias[: len(keep)] = old.bias[list(keep)]
        block.router = new
        block.routing_counts = torch.zeros(len(keep) + extra, dtype=torch.long, device=old.weight.device)


def _update_layout(model: PreTrainedModel) -> None:
    for b in require_moe_blocks(model):
        b.top_k = min(b.top_k, b.num_experts)
    setattr(model.config, CONFIG_KEY, model.dume_layout())


def _check_mode(mode: str, others: Sequence[Batches] | None) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}.")
    if mode == "exact" and others is None:
        raise ValueError("mode='exact' recollects every expert's statistics: pass the calibration batches of the "
                         "experts already in the model (or use mode='fast').")


def add_expert(
    model: PreTrainedModel,
    stats: RouterStatistics,
    expert: PreTrainedModel,
    batches: Batches,
    name: str,
    *,
    mode: str = "fast",
    existing_batches: Sequence[Batches] | None = None,
    lam: float = 1e-2,
    normalize: bool = True,
    max_tokens_per_sequence: int = 1024,
    vocab: str = "align",
    tokenizer: Any = None,
    progress: bool = True,
) -> RouterStatistics:
    """Add ``expert`` (a dense model of the same architecture) to the DUME ``model`` in place; returns the
    statistics of the new expert set (``stats`` must describe the model's current experts, in order).

    ``vocab`` and ``tokenizer`` as in :func:`dume_exp.upcycle`: with ``"align"`` the model keeps the vocabulary
    rows it shares with the new expert."""
    _check_mode(mode, existing_batches)
    blocks = require_moe_blocks(model)
    num = blocks[0].num_experts
    if stats.num_experts != num:
        raise ValueError(f"stats describe {stats.num_experts} experts but the model has {num}.")
    if name in stats.expert_names:
        raise ValueError(f"An expert named {name!r} is already in the model ({stats.expert_names}).")
    with dense_view(model) as dense:
        check_compatible([dense, expert], vocab)
        rows = shared_vocab_rows([dense, expert], vocab, tokenizer)
    truncate_vocab(model, rows)
    _shift_backbone(model, expert, num, +1)
    for layer, block in zip(decoder_layers(expert), blocks):
        block.experts.append(copy.deepcopy(layer.mlp).to(block.router.weight))
    _resize_routers(model, list(range(num)), 1)
    _update_layout(model)
    if mode == "fast":
        new = collect_statistics(model, [batches], max_tokens_per_sequence, expert_names=[name],
                                 progress=progress, experts=[num])
        stats = RouterStatistics.concat([stats, new])
    else:
        stats = collect_statistics(model, [*existing_batches, batches], max_tokens_per_sequence,
                                   expert_names=[*stats.expert_names, name], progress=progress)
    fit_routers(model, stats, lam=lam, normalize=normalize)
    return stats


def remove_expert(
    model: PreTrainedModel,
    stats: RouterStatistics,
    expert: int | str,
    *,
    removed_model: PreTrainedModel | None = None,
    mode: str = "fast",
    remaining_batches: Sequence[Batches] | None = None,
    lam: float = 1e-2,
    normalize: bool = True,
    max_tokens_per_sequence: int = 1024,
    progress: bool = True,
) -> RouterStatistics:
    """Remove one expert (index or name) from the DUME ``model`` in place; returns the remaining statistics.

    With ``removed_model`` (the dense expert that was merged in) the backbone becomes the mean of the
    remaining experts; without it the backbone is kept as it is.
    """
    _check_mode(mode, remaining_batches)
    blocks = require_moe_blocks(model)
    num = blocks[0].num_experts
    index = stats.expert_names.index(expert) if isinstance(expert, str) else int(expert)
    if num < 2 or not 0 <= index < num or stats.num_experts != num:
        raise ValueError(f"Cannot remove expert {expert!r} from a model with {num} experts ({stats.expert_names}).")
    keep = [d for d in range(num) if d != index]
    if removed_model is not None:
        _shift_backbone(model, removed_model, num, -1)
    for block in blocks:
        block.experts = nn.ModuleList(block.experts[d] for d in keep)
    _resize_routers(model, keep, 0)
    _update_layout(model)
    names = [stats.expert_names[d] for d in keep]
    if mode == "fast":
        stats = stats.select(keep)
    else:
        stats = collect_statistics(model, remaining_batches, max_tokens_per_sequence, expert_names=names,
                                   progress=progress)
    fit_routers(model, stats, lam=lam, normalize=normalize)
    return stats


# ------------------------------------------------------------------------------------------------ CLI

def _text_batches(tokenizer, path: Path, max_len: int, batch_size: int = 8, max_samples: int = 2048) -> list[dict]:
    texts = [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()][:max_samples]
    if not texts:
        raise ValueError(f"{path} has no rows with a 'text' field; calibration data cannot be empty.")
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i : i + batch_size], truncation=True, max_length=max_len, padding=True, return_tensors="pt")
        out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return out


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
    model.save_pretrained(args.out, tokenizer=tokenizer)
    stats.save(args.out / STATS_FILE)
    print(f"wrote {args.out}: experts {stats.expert_names}")


if __name__ == "__main__":
    main()
