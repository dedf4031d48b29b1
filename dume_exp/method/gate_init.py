"""Training-free router initialisations other than the ridge solve: the peers DUME is compared against.

Each returns :class:`~dume_exp.method.ridge.RouterWeights` (``weight`` ``[L, D, H]``, ``bias`` ``[L, D]``, float64)
for :func:`~dume_exp.method.ridge.apply_router_weights`:

- :func:`nearest_centroid_weights` — from DUME's router statistics: router row d is the mean of expert d's router
  inputs, bias ``-‖μ_d‖²/2``, so the top logit is the nearest centroid (Euclidean);
- :func:`hidden_gate_weights` — mergekit-moe's ``gate_mode: hidden``: each domain's mean, over its calibration
  sequences, of every decoder layer's input at the sequence's last real token, L2-normalised, bias 0;
- :func:`cheap_embed_weights` — mergekit-moe's ``gate_mode: cheap_embed``: each domain's sum of input-embedding
  rows over its real calibration tokens, L2-normalised, the same for every layer, bias 0.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .ridge import RouterWeights
from .router_statistics import RouterStatistics, _check_vocabulary, _ids_and_mask

BatchesByDomain = Sequence[Iterable[Mapping[str, torch.Tensor]]]


def nearest_centroid_weights(stats: RouterStatistics) -> RouterWeights:
    """Router row ``d`` of layer ``l`` = μ_{l,d}, the mean router input (MoE block input) over expert ``d``'s
    calibration tokens (``sums[l, d, :H] / sums[l, d, H]``), bias ``-‖μ_{l,d}‖²/2``.

    ``μ·x − ‖μ‖²/2 = (‖x‖² − ‖x − μ‖²)/2``: the experts ranked by logit are ranked by distance to their centroid.
    """
    hidden = stats.hidden_size
    means = stats.sums[:, :, :hidden] / stats.sums[:, :, hidden:]
    return RouterWeights(means.contiguous(), -0.5 * means.pow(2).sum(-1))


def _unit(vectors: torch.Tensor, what: str) -> torch.Tensor:
    """``vectors`` divided by their L2 norm along the last axis; a zero vector is refused."""
    norm = vectors.norm(dim=-1, keepdim=True)
    if not (norm > 0).all() or not torch.isfinite(norm).all():
        raise ValueError(f"Cannot L2-normalise the {what}: a vector is zero or not finite.")
    return vectors / norm


def _real_rows(batch: Mapping[str, torch.Tensor], vocab: int, domain: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's ``input_ids`` and boolean mask, rows without a real token dropped (ids checked against ``vocab``)."""
    ids, mask = _ids_and_mask(batch)
    keep = mask.any(dim=1)
    ids, mask = ids[keep], mask[keep]
    if ids.numel():
        _check_vocabulary(ids[mask], vocab, domain)
    return ids, mask


def _domain_names(batches_by_domain: BatchesByDomain, names: Sequence[str] | None) -> list[str]:
    return list(names) if names is not None else [f"domain_{d}" for d in range(len(batches_by_domain))]


@torch.no_grad()
def last_token_hidden_states(model: nn.Module, batches_by_domain: BatchesByDomain, progress: bool = True,
                             bf16_autocast: bool = False,
                             names: Sequence[str] | None = None) -> tuple[torch.Tensor, list[int], list[int]]:
    """``(means [L, D, H] float64, sequences per domain, real tokens per domain)``: for each domain, the mean over
    its sequences of ``hidden_states[:-1]`` of a dense causal LM (the input of each decoder layer: the embedding
    output for layer 0, the residual stream after layer l−1 for layer l) at the sequence's last real token, the
    last position whose attention mask is 1 (batches may be left- or right-padded)."""
    names = _domain_names(batches_by_domain, names)
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().weight.shape[0]
    sums: list[torch.Tensor] = []
    sequences, tokens = [], []
    was_training = model.training
    model.eval()
    try:
        for name, batches in zip(names, batches_by_domain):
            total, rows, real = None, 0, 0
            for batch in tqdm(batches, desc=f"last-token hidden states: {name}", disable=not progress, leave=False):
                ids, mask = _real_rows(batch, vocab, name)
                if not ids.numel():
                    continue
                last = mask.shape[1] - 1 - mask.flip(1).int().argmax(dim=1)  # [B] last real position of each row
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_autocast):
                    out = decoder(input_ids=ids.to(device), attention_mask=mask.long().to(device),
                                  output_hidden_states=True, use_cache=False)
                rows_idx = torch.arange(ids.shape[0], device=device)
                states = torch.stack([h[rows_idx, last.to(device)].double() for h in out.hidden_states[:-1]])
                total = states.sum(1) if total is None else total + states.sum(1)  # [L, H]
                rows, real = rows + ids.shape[0], real + int(mask.sum())
            if total is None:
                raise ValueError(f"No calibration sequence with a real token for domain {name!r}.")
            sums.append(total.cpu() / rows)
            sequences.append(rows)
            tokens.append(real)
    finally:
        model.train(was_training)
    return torch.stack(sums, dim=1), sequences, tokens


def hidden_gate_weights(model: nn.Module, batches_by_domain: BatchesByDomain, progress: bool = True,
                        bf16_autocast: bool = False,
                        names: Sequence[str] | None = None) -> tuple[RouterWeights, list[int], list[int]]:
    """mergekit-moe's ``hidden`` gates computed with the dense ``model``: router row ``d`` of layer ``l`` = the
    L2-normalised :func:`last_token_hidden_states` mean of domain ``d`` at layer ``l``, bias 0. Also returns the
    sequences and real tokens of each domain.

    mergekit tokenises each prompt itself with the tokenizer's BOS token prepended; these are the batches as
    tokenised by the caller (BOS only where its tokenizer adds one).
    """
    means, sequences, tokens = last_token_hidden_states(model, batches_by_domain, progress, bf16_autocast, names)
    weight = _unit(means, "last-token hidden states")
    return RouterWeights(weight.contiguous(), weight.new_zeros(weight.shape[:2])), sequences, tokens


def embedding_sums(embeddings: torch.Tensor, batches_by_domain: BatchesByDomain,
                   names: Sequence[str] | None = None) -> tuple[torch.Tensor, list[int]]:
    """``(sums [D, H] float64, real tokens per domain)``: each domain's sum of the rows of ``embeddings``
    ``[V, H]`` over its real (attention mask 1) tokens, via per-token counts (no forward pass)."""
    names = _domain_names(batches_by_domain, names)
    vocab = embeddings.shape[0]
    table = embeddings.detach().float().double().cpu()
    sums, tokens = [], []
    for name, batches in zip(names, batches_by_domain):
        counts = torch.zeros(vocab, dtype=torch.float64)
        for batch in batches:
            ids, mask = _real_rows(batch, vocab, name)
            counts += torch.bincount(ids[mask], minlength=vocab).double()
        sums.append(counts @ table)
        tokens.append(int(counts.sum()))
    return torch.stack(sums), tokens


def cheap_embed_weights(embeddings: torch.Tensor, batches_by_domain: BatchesByDomain, num_layers: int,
                        names: Sequence[str] | None = None) -> tuple[RouterWeights, list[int]]:
    """mergekit-moe's ``cheap_embed`` gates: router row ``d`` of every layer = the L2-normalised
    :func:`embedding_sums` of domain ``d``, bias 0; also the real tokens of each domain."""
    sums, tokens = embedding_sums(embeddings, batches_by_domain, names)
    weight = _unit(sums, "embedding sums").expand(num_layers, -1, -1).contiguous()
    return RouterWeights(weight, weight.new_zeros(weight.shape[:2])), tokens
