"""Persistent router-statistics store: per expert, keyed by exactly what determines the statistics.

An expert's statistics depend on the backbone (every parameter outside the MoE blocks), that expert's
MLPs, its calibration tokens, ``max_tokens_per_sequence``, whether padding is masked, the model dtype and the
collector's code version; not on the routers (statistics are collected under forced routing) nor on the other experts.
So λ sweeps, repeated runs and added experts load them instead of running forward passes.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from ..utils.cache import CorruptEntryError, cache_root, quarantine, recipe_key
from ..utils.fingerprints import batches_fingerprint, tensor_fingerprint
from .moe import require_moe_blocks
from .router_statistics import RouterStatistics, collect_statistics

COLLECTOR_VERSION = 1


def backbone_fingerprint(model: nn.Module) -> str:
    """Every parameter outside the MoE blocks (embeddings, attention, norms, head)."""
    inside = {id(p) for b in require_moe_blocks(model) for p in b.parameters()}
    return tensor_fingerprint(p for _, p in sorted(model.named_parameters()) if id(p) not in inside)


def expert_fingerprint(model: nn.Module, expert: int) -> str:
    return tensor_fingerprint(p for b in require_moe_blocks(model) for p in b.experts[expert].parameters())


class StatisticsStore:
    """Statistics files under ``<root>/<key>.safetensors`` (default root: ``<cache>/statistics``)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else cache_root() / "statistics"

    def keys(self, model: nn.Module, batches_by_expert: Sequence[Sequence[Mapping[str, torch.Tensor]]],
             max_tokens_per_sequence: int, bf16_autocast: bool = False, mask_padding: bool = True,
             experts: Sequence[int] | None = None) -> list[str]:
        """The store keys of the experts ``experts`` (default: all; expert ``d`` is calibrated on
        ``batches_by_expert[d]``)."""
        backbone = backbone_fingerprint(model)
        dtype = str(next(model.parameters()).dtype) + ("+bf16-autocast" if bf16_autocast else "")
        return [recipe_key({"backbone": backbone, "expert": expert_fingerprint(model, d),
                            "data": batches_fingerprint(batches_by_expert[d]), "max_tokens_per_sequence": int(max_tokens_per_sequence),
                            "mask_padding": bool(mask_padding), "dtype": dtype, "collector": COLLECTOR_VERSION},
                           length=24)
                for d in _indices(batches_by_expert, experts)]

    def statistics(
        self,
        model: nn.Module,
        batches_by_expert: Sequence[Sequence[Mapping[str, torch.Tensor]]],
        max_tokens_per_sequence: int,
        expert_names: Sequence[str],
        progress: bool = True,
        bf16_autocast: bool = False,
        mask_padding: bool = True,
        experts: Sequence[int] | None = None,
    ) -> tuple[RouterStatistics, dict]:
        """Stored statistics where they exist and verify, a collection pass for the rest (a corrupt file is moved aside
        with a warning and collected again); returns them with a report (``collected``/``loaded`` expert names,
        ``collect_wall_s`` now, and the original ``wall_s``/``tokens``). ``experts`` (indices; default all): only
        those experts' statistics, so that one job per domain can fill the store for a later run."""
        index = _indices(batches_by_expert, experts)
        keys = self.keys(model, batches_by_expert, max_tokens_per_sequence, bf16_autocast, mask_padding, index)
        paths = [self.root / f"{k}.safetensors" for k in keys]
        stored = [_stored(p) for p in paths]
        missing = [slot for slot, entry in enumerate(stored) if entry is None]
        start = time.perf_counter()
        if missing:
            fresh = collect_statistics(model, [batches_by_expert[index[s]] for s in missing], max_tokens_per_sequence,
                                       expert_names=[expert_names[index[s]] for s in missing], progress=progress,
                                       experts=[index[s] for s in missing], bf16_autocast=bf16_autocast,
                                       mask_padding=mask_padding)
            wall = time.perf_counter() - start
            for i, slot in enumerate(missing):
                share = wall * float(fresh.token_counts[i]) / max(1, int(fresh.token_counts.sum()))
                part, meta = fresh.select([i]), {"wall_s": repr(share), "key": keys[slot]}
                part.save(paths[slot], metadata=meta)
                stored[slot] = (part, meta)
        collect_wall = time.perf_counter() - start
        stats = RouterStatistics.concat([RouterStatistics(part.gram, part.sums, [expert_names[index[slot]]])
                                         for slot, (part, _) in enumerate(stored)])
        report = {"collected": [expert_names[index[s]] for s in missing],
                  "loaded": [expert_names[index[s]] for s in range(len(paths)) if s not in missing],
                  "collect_wall_s": collect_wall, "wall_s": sum(float(meta.get("wall_s", "0")) for _, meta in stored),
                  "tokens": int(stats.token_counts.sum()), "keys": keys}
        return stats, report


def _indices(batches_by_expert: Sequence, experts: Sequence[int] | None) -> list[int]:
    index = list(range(len(batches_by_expert))) if experts is None else [int(d) for d in experts]
    if not all(0 <= d < len(batches_by_expert) for d in index):
        raise IndexError(f"experts {index} outside the {len(batches_by_expert)} experts calibrated")
    return index


def _stored(path: Path) -> tuple[RouterStatistics, dict[str, str]] | None:
    """The verified statistics stored at ``path`` with the file's metadata; None when there are none or they are
    corrupt (the file is then moved aside with a warning, to be collected again)."""
    if not path.exists():
        return None
    try:
        return RouterStatistics.load_with_metadata(path)
    except CorruptEntryError as e:
        quarantine(path, e.problem)
        return None
