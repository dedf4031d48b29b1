"""Router statistics: per layer and expert, the Gram matrix and sum of x̃ = [x; 1] over calibration tokens.

They are additive (shards, batches and machines simply sum) and per expert (a subset of experts is
a slice), which is what makes λ sweeps and adding or removing experts free of forward passes.
"""
from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..utils.cache import CorruptEntryError, atomic_file
from ..utils.fingerprints import tensors_sha256
from ..utils.integrity import NonFiniteError, nonfinite_statistics
from .moe import require_moe_blocks, force_expert

Batch = dict[str, torch.Tensor]  # input_ids and attention_mask, [batch, seq]


def text_batches(tokenizer: Any, texts: Sequence[str], max_len: int, batch_size: int) -> list[Batch]:
    """Tokenise ``texts`` (truncating to ``max_len`` tokens) and right-pad them into batches of ``batch_size``."""
    batches = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[i : i + batch_size]), truncation=True, max_length=max_len, padding=True,
                        return_tensors="pt")
        batches.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return batches


@dataclass
class RouterStatistics:
    """``gram[l, d]`` = Σ x̃x̃ᵀ and ``sums[l, d]`` = Σ x̃ over expert ``d``'s calibration tokens at layer ``l``.

    Shapes ``[L, D, H+1, H+1]`` and ``[L, D, H+1]``, float64; the last coordinate of x̃ is the
    constant 1, so ``sums[l, d, -1]`` is expert ``d``'s token count.
    """

    gram: torch.Tensor
    sums: torch.Tensor
    expert_names: list[str]

    def __post_init__(self) -> None:
        L, D, H1, H1b = self.gram.shape
        if H1 != H1b or tuple(self.sums.shape) != (L, D, H1):
            raise ValueError(f"Inconsistent statistics shapes: gram {tuple(self.gram.shape)}, sums {tuple(self.sums.shape)}.")
        if len(self.expert_names) != D:
            raise ValueError(f"{len(self.expert_names)} expert names for {D} experts.")

    @property
    def num_layers(self) -> int:
        return self.gram.shape[0]

    @property
    def num_experts(self) -> int:
        return self.gram.shape[1]

    @property
    def hidden_size(self) -> int:
        return self.gram.shape[2] - 1

    @property
    def token_counts(self) -> torch.Tensor:
        """Calibration tokens per expert, ``[D]``."""
        return self.sums[0, :, -1].round().long()

    def __add__(self, other: "RouterStatistics") -> "RouterStatistics":
        if self.gram.shape != other.gram.shape or self.expert_names != other.expert_names:
            raise ValueError(
                "Only statistics of the same layers and experts add up: "
                f"{tuple(self.gram.shape)} {self.expert_names} vs {tuple(other.gram.shape)} {other.expert_names}."
            )
        return RouterStatistics(self.gram + other.gram, self.sums + other.sums, list(self.expert_names))

    @classmethod
    def concat(cls, parts: Sequence["RouterStatistics"]) -> "RouterStatistics":
        """Join statistics of disjoint expert sets (same layers and hidden size) along the expert axis."""
        names = [n for p in parts for n in p.expert_names]
        if not parts or len(set(names)) != len(names) or len({p.gram.shape[0::2] for p in parts}) != 1:
            raise ValueError(f"concat needs statistics of the same layers and hidden size with distinct experts; got {names}.")
        return cls(torch.cat([p.gram for p in parts], 1), torch.cat([p.sums for p in parts], 1), names)

    def select(self, experts: Sequence[int | str]) -> "RouterStatistics":
        """Statistics of a subset of experts (by index or name), in the given order."""
        idx = [self.expert_names.index(e) if isinstance(e, str) else int(e) for e in experts]
        if not idx or any(not 0 <= i < self.num_experts for i in idx) or len(set(idx)) != len(idx):
            raise ValueError(f"Invalid expert selection {list(experts)} for experts {self.expert_names}.")
        return RouterStatistics(self.gram[:, idx].clone(), self.sums[:, idx].clone(), [self.expert_names[i] for i in idx])

    def save(self, path: str | Path, metadata: Mapping[str, str] | None = None) -> None:
        """Write a safetensors file atomically (temp file, fsync, rename), the tensors' sha256 in its metadata."""
        tensors = {"gram": self.gram.contiguous(), "sums": self.sums.contiguous()}
        meta = {"expert_names": json.dumps(self.expert_names), **(metadata or {}), "sha256": tensors_sha256(tensors)}
        with atomic_file(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> "RouterStatistics":
        """The statistics in ``path``, verified (see :meth:`load_with_metadata`)."""
        return cls.load_with_metadata(path)[0]

    @classmethod
    def load_with_metadata(cls, path: str | Path) -> tuple["RouterStatistics", dict[str, str]]:
        """The statistics in ``path`` and the file's metadata; raises :class:`~dume_exp.utils.cache.CorruptEntryError`
        naming the file when it is unreadable (e.g. empty), fails its sha256 or holds NaN/inf (files written before
        the checksum are only checked for NaN/inf)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"Router statistics file {path} does not exist; collect them with collect_statistics().")
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
            tensors = load_file(str(path))
            stats = cls(tensors["gram"], tensors["sums"], json.loads(meta["expert_names"]))
        except (SafetensorError, KeyError, ValueError) as e:
            raise CorruptEntryError(path, f"not a readable statistics file ({type(e).__name__}: {e})") from e
        if "sha256" in meta and meta["sha256"] != tensors_sha256(tensors):
            raise CorruptEntryError(path, "its tensors differ from the sha256 stored in its metadata")
        problem = nonfinite_statistics(stats.gram, stats.sums, stats.expert_names)
        if problem:
            raise CorruptEntryError(path, problem)
        return stats, meta


def _ids_and_mask(batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's ``input_ids`` and boolean ``attention_mask`` (all ones when absent), both ``[B, T]``."""
    ids = torch.as_tensor(batch["input_ids"])
    if ids.dim() == 1:
        ids = ids[None]
    mask = torch.as_tensor(batch.get("attention_mask", torch.ones_like(ids))).reshape(ids.shape).bool()
    return ids, mask


def _pack(batch: Mapping[str, torch.Tensor], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Right-pad the first ``max_tokens`` real tokens of every row (left or right padding in)."""
    ids, mask = _ids_and_mask(batch)
    rows = [row[m][:max_tokens] for row, m in zip(ids, mask) if m.any()]
    if not rows:
        return None
    width = max(len(r) for r in rows)
    packed = torch.zeros(len(rows), width, dtype=torch.long)
    packed_mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        packed[i, : len(r)] = r
        packed_mask[i, : len(r)] = 1
    return packed, packed_mask


def _forward_inputs(batch: Mapping[str, torch.Tensor], max_tokens: int,
                    mask_padding: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``(input_ids, attention_mask, counted)`` of one statistics forward pass, ``counted`` the boolean ``[B, T]``
    positions that enter the statistics; None when no position counts.

    ``mask_padding``: the packed real tokens (:func:`_pack`), each counted. Otherwise the batch as given (its own
    pad ids, padding side and attention mask), cut to its first ``max_tokens`` columns, every position counted.
    """
    if mask_padding:
        packed = _pack(batch, max_tokens)
        return None if packed is None else (*packed, packed[1].bool())
    ids, mask = _ids_and_mask(batch)
    ids, mask = ids[:, :max_tokens], mask[:, :max_tokens]
    return (ids, mask.long(), torch.ones_like(mask)) if ids.numel() else None


@torch.inference_mode()
def collect_statistics(
    model: nn.Module,
    batches_by_expert: Sequence[Iterable[Mapping[str, torch.Tensor]]],
    max_tokens_per_sequence: int = 1024,
    expert_names: Sequence[str] | None = None,
    progress: bool = True,
    experts: Sequence[int] | None = None,
    bf16_autocast: bool = False,
    mask_padding: bool = True,
    distributed: bool | None = None,
) -> RouterStatistics:
    """Accumulate router statistics with every MoE block forced to expert ``d`` on ``batches_by_expert[d]``.

    Each batch is a dict with ``input_ids`` and optionally ``attention_mask`` (left or right
    padding). With ``mask_padding`` (default) only the first ``max_tokens_per_sequence`` real tokens of each
    sequence count; x is the MoE block's input (the post-attention-norm hidden state).
    ``experts`` restricts the pass to those expert indices (``batches_by_expert`` then lists
    their data in that order), e.g. to add one new expert's statistics to stored ones.
    ``bf16_autocast`` runs the forward passes under bf16 autocast (about 2× faster on CPUs with
    native bf16); accumulation stays float64.
    ``mask_padding=False`` reproduces the reference implementation: every position of each batch as given
    (the tokenizer-padded ``[B, T]`` grid, pad tokens included, cut to its first ``max_tokens_per_sequence``
    columns) counts, the forward pass still using the batch's attention mask; token counts then include the pads.
    ``distributed`` (default: whenever a ``torch.distributed`` process group is initialised, e.g. under ``torchrun``
    or ``accelerate launch``): each process takes every ``world_size``-th batch of each expert, starting at its rank,
    and the float64 sums are all-reduced, so every process returns the statistics of all batches; progress bars
    only on rank 0.
    """
    shard = _process_shard(distributed)
    if shard is not None:
        rank, world = shard
        batches_by_expert = [itertools.islice(batches, rank, None, world) for batches in batches_by_expert]
        progress = progress and rank == 0
    blocks = require_moe_blocks(model)
    hidden = blocks[0].router.in_features
    experts = _collected_experts(blocks[0].num_experts, experts, len(batches_by_expert), max_tokens_per_sequence)
    names = list(expert_names) if expert_names is not None else [f"expert_{d}" for d in experts]
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().weight.shape[0]
    gram = torch.zeros(len(blocks), len(experts), hidden + 1, hidden + 1, dtype=torch.float64, device=device)
    sums = torch.zeros(len(blocks), len(experts), hidden + 1, dtype=torch.float64, device=device)
    state: dict = {}
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    handles = [b.register_forward_pre_hook(_accumulator(gram[i], sums[i], state)) for i, b in enumerate(blocks)]
    was_training = model.training
    model.eval()
    try:
        for slot, (d, batches) in enumerate(zip(experts, batches_by_expert)):
            state["expert"] = slot
            with force_expert(model, d):
                for batch in tqdm(batches, desc=f"router statistics: {names[slot]}", disable=not progress, leave=False):
                    inputs = _forward_inputs(batch, int(max_tokens_per_sequence), mask_padding)
                    if inputs is None:
                        continue
                    _check_vocabulary(inputs[0], vocab, names[slot])
                    ids, mask, counted = (t.to(device) for t in inputs)
                    state["mask"] = counted.reshape(-1)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_autocast):
                        decoder(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if shard is not None:
        torch.distributed.all_reduce(gram)
        torch.distributed.all_reduce(sums)
    return _checked(gram, sums, names)


def _process_shard(distributed: bool | None) -> tuple[int, int] | None:
    """``(rank, world_size)`` when collecting in parallel, else ``None``."""
    running = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed and not running:
        raise RuntimeError("collect_statistics(distributed=True) needs an initialised process group: launch with "
                           "torchrun (or accelerate launch) and call torch.distributed.init_process_group first.")
    if not running or distributed is False or torch.distributed.get_world_size() == 1:
        return None
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def _accumulator(gram: torch.Tensor, sums: torch.Tensor, state: dict) -> Callable:
    """A forward pre-hook adding the block input's [x; 1] Gram matrix and sum (at the positions ``state["mask"]``)
    into expert slot ``state["expert"]`` of one layer's ``gram`` ``[E, H+1, H+1]`` and ``sums`` ``[E, H+1]``."""
    hidden = gram.shape[-1] - 1

    def hook(module: nn.Module, args: tuple) -> None:
        x = args[0].reshape(-1, hidden)[state["mask"]].to(torch.float64)
        g, s, total = gram[state["expert"]], x.sum(0), x.shape[0]  # the blocks of [x; 1], without building it
        g[:hidden, :hidden].addmm_(x.T, x)
        g[:hidden, hidden] += s
        g[hidden, :hidden] += s
        g[hidden, hidden] += total
        sums[state["expert"], :hidden] += s
        sums[state["expert"], hidden] += total
    return hook


def _collected_experts(num_experts: int, experts: Sequence[int] | None, num_batch_lists: int,
                       max_tokens_per_sequence: int) -> list[int]:
    """The expert indices a collection covers, after checking them against the model and the batch lists."""
    experts = list(range(num_experts)) if experts is None else [int(d) for d in experts]
    if any(not 0 <= d < num_experts for d in experts):
        raise ValueError(f"experts {experts} out of range: the model has {num_experts} experts.")
    if num_batch_lists != len(experts):
        raise ValueError(f"batches_by_expert has {num_batch_lists} entries but {len(experts)} experts are "
                         f"collected (the model has {num_experts} experts).")
    if int(max_tokens_per_sequence) < 1:
        raise ValueError(f"max_tokens_per_sequence must be a positive integer; got {max_tokens_per_sequence}.")
    return experts


def _checked(gram: torch.Tensor, sums: torch.Tensor, names: list[str]) -> RouterStatistics:
    """The collected statistics, refused when an expert saw no token or a value is not finite."""
    counts = sums[0, :, -1]
    empty = [names[slot] for slot in range(len(names)) if counts[slot] == 0]
    if empty:
        raise ValueError(f"No calibration tokens for expert(s) {empty}: give every expert at least one non-empty sequence.")
    problem = nonfinite_statistics(gram, sums, names)
    if problem:
        raise NonFiniteError(
            f"The collected router statistics are not finite: {problem}. The forward pass overflowed on that expert's "
            "calibration data: check its weights (dume_exp.utils.integrity.check_finite_parameters) and collect in float32 "
            "without bf16 autocast.")
    return RouterStatistics(gram.cpu(), sums.cpu(), names)


def _check_vocabulary(ids: torch.Tensor, vocab: int, expert: str) -> None:
    """Raise ``ValueError`` before the forward pass when a token id has no embedding row."""
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab:
        raise ValueError(
            f"A calibration batch of expert {expert!r} has token ids {low}..{high} (max id {high}), but the model's "
            f"vocabulary has {vocab} embedding rows (valid ids 0..{vocab - 1}). The batches were probably tokenized with "
            "another model's tokenizer: tokenize the calibration texts with the experts' tokenizer.")
