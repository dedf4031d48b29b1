"""Dynamic experts: add an expert to, or remove one from, an existing DUME model without retraining.

The backbone of a D-expert model is the mean of D experts' backbones, so adding expert e gives
``(D·mean + e)/(D+1)`` and removing it ``(D·mean − e)/(D−1)`` without the other experts' weights.
Routers are re-solved from the statistics. ``mode="fast"`` reuses the stored statistics of the
experts already there (collected under the previous backbone) and runs forward passes only for the
new expert; ``mode="exact"`` recollects every expert's statistics under the new backbone.

Both functions are all-or-nothing: on any exception (``KeyboardInterrupt`` included) the model is put back
exactly as it was, so a retry starts from the same state. The command line (``python -m dume_exp.dynamic
add|remove --help``, :mod:`dume_exp.cli.dynamic`) replaces its output folder atomically.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from .moe import require_moe_blocks
from .ridge import fit_routers
from .router_statistics import RouterStatistics, collect_statistics
from .upcycle import (CONFIG_KEY, check_compatible, decoder_layers, dense_view, shared_vocab_rows,
                      truncate_vocab, vocab_rows)

Batches = Sequence[Mapping[str, torch.Tensor]]
MODES = ("fast", "exact")


def _module_state(module: nn.Module) -> dict[str, Any]:
    """A shallow copy of ``module``'s attributes, with its containers (parameters, buffers, children) copied too."""
    return {k: copy.copy(v) if isinstance(v, (dict, set, list)) else v for k, v in module.__dict__.items()}


@contextlib.contextmanager
def _rollback_on_error(model: PreTrainedModel) -> Iterator[None]:
    """Put ``model`` back exactly as it was if the body raises anything (``KeyboardInterrupt`` included).

    Restores every submodule's attributes (parameters, buffers, children, ``top_k``, ...), the tensor held by
    each parameter and buffer, and the config's fields. Tensors are kept by reference, not copied: the body
    must replace tensors (``p.data = new``, new modules) rather than write into existing ones.
    """
    modules = [(m, _module_state(m)) for m in model.modules()]
    tensors = [(t, t.data) for t in itertools.chain(model.parameters(), model.buffers())]
    config = copy.deepcopy(model.config.__dict__)
    try:
        yield
    except BaseException:
        for module, state in modules:
            module.__dict__.clear()
            module.__dict__.update(state)
        for tensor, data in tensors:
            tensor.data = data
        model.config.__dict__.clear()
        model.config.__dict__.update(config)
        raise


def _shift_backbone(model: nn.Module, expert: nn.Module, num_before: int, sign: int) -> None:
    """Mean over ``num_before`` experts → mean with ``expert`` added (sign=+1) or taken out (sign=−1).

    Each parameter gets a new tensor (the old one is not written to, see :func:`_rollback_on_error`)."""
    inside = {id(p) for b in require_moe_blocks(model) for p in b.parameters()}
    source = dict(expert.named_parameters())
    num_after = num_before + sign
    with torch.no_grad():
        for name, p in model.named_parameters():
            if id(p) in inside:
                continue
            new = (p.double() * num_before + sign * source[name][: p.shape[0]].double()) / num_after
            p.data = new.to(p.dtype)


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


def _check_inputs(mode: str, stats: RouterStatistics, num: int, batches: Sequence[Batches] | None, argument: str,
                  expected: int) -> None:
    """``mode`` is known, ``stats`` describe the model's ``num`` experts and, with ``mode="exact"``, ``batches``
    (the ``argument``) hold one list of calibration batches for each of the ``expected`` experts."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}.")
    if stats.num_experts != num:
        raise ValueError(f"stats describe {stats.num_experts} experts but the model has {num}: pass the statistics "
                         "saved with this model.")
    if mode != "exact":
        return
    if batches is None:
        raise ValueError(f"mode='exact' recollects every expert's statistics: pass {argument} (the calibration "
                         f"batches of the {expected} experts, in the model's order) or use mode='fast'.")
    if len(batches) != expected:
        raise ValueError(f"{argument} has {len(batches)} entries for {expected} experts: pass one list of "
                         "calibration batches per expert, in the model's order.")


def _expert_index(stats: RouterStatistics, expert: int | str) -> int:
    """The index of ``expert`` (an index or a name in ``stats``)."""
    if not isinstance(expert, str):
        return int(expert)
    if expert not in stats.expert_names:
        raise ValueError(f"No expert named {expert!r} in the model (experts {stats.expert_names}).")
    return stats.expert_names.index(expert)


def _check_removed_model(model: PreTrainedModel, removed: PreTrainedModel) -> None:
    """``removed`` can be taken out of the backbone mean: same architecture, at least the model's vocabulary."""
    with dense_view(model) as dense:
        check_compatible([dense, removed], "align")
        rows = vocab_rows(dense)
    if vocab_rows(removed) < rows:
        raise ValueError(f"removed_model has {vocab_rows(removed)} vocabulary rows but the model has {rows}: pass "
                         "the dense expert that was merged into the model.")


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
    rows it shares with the new expert. On any error the model is left exactly as it was."""
    blocks = require_moe_blocks(model)
    num = blocks[0].num_experts
    _check_inputs(mode, stats, num, existing_batches, "existing_batches", num)
    if name in stats.expert_names:
        raise ValueError(f"An expert named {name!r} is already in the model ({stats.expert_names}).")
    with dense_view(model) as dense:
        check_compatible([dense, expert], vocab)
        rows = shared_vocab_rows([dense, expert], vocab, tokenizer)
    with _rollback_on_error(model):
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
    remaining experts; without it the backbone is kept as it is. On any error the model is left exactly as it was.
    """
    blocks = require_moe_blocks(model)
    num = blocks[0].num_experts
    _check_inputs(mode, stats, num, remaining_batches, "remaining_batches", num - 1)
    index = _expert_index(stats, expert)
    if num < 2 or not 0 <= index < num:
        raise ValueError(f"Cannot remove expert {expert!r} from a model with {num} experts ({stats.expert_names}).")
    if removed_model is not None:
        _check_removed_model(model, removed_model)
    keep = [d for d in range(num) if d != index]
    names = [stats.expert_names[d] for d in keep]
    with _rollback_on_error(model):
        if removed_model is not None:
            _shift_backbone(model, removed_model, num, -1)
        for block in blocks:
            block.experts = nn.ModuleList(block.experts[d] for d in keep)
        _resize_routers(model, keep, 0)
        _update_layout(model)
        if mode == "fast":
            stats = stats.select(keep)
        else:
            stats = collect_statistics(model, remaining_batches, max_tokens_per_sequence, expert_names=names,
                                       progress=progress)
        fit_routers(model, stats, lam=lam, normalize=normalize)
    return stats
