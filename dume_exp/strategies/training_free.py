"""Training-free peers of DUME's ridge routers, on the same upcycled model and calibration data (only the routers
differ): nearest-centroid routers from DUME's own statistics, and mergekit-moe's ``hidden`` and ``cheap_embed``
gate initialisations (the gates :mod:`dume_exp.method.gate_init` computes)."""
from __future__ import annotations

from typing import Any

from transformers import PreTrainedModel

from ..method.gate_init import cheap_embed_weights, hidden_gate_weights, nearest_centroid_weights
from ..method.ridge import RouterWeights, apply_router_weights
from ..method.upcycle import weight_average
from ..native import annotate
from .registry import register
from .base import BuildContext, Candidate, timed


def _routed(ctx: BuildContext, model: PreTrainedModel, weights: RouterWeights, description: str,
            tokens: list[int]) -> PreTrainedModel:
    """``model`` with ``weights`` as its routers, recorded for its model card."""
    apply_router_weights(model, weights)
    annotate(model, router={"method": "training-free", "description": description}, domains=list(ctx.domains),
             calibration_tokens=tokens)
    return model


def _info(gate_mode: str, tokens: list[int], **more: Any) -> dict[str, Any]:
    return {"gate_mode": gate_mode, "calibration_tokens": tokens, **more}


@register("nearest_centroid", order=52, router_bias=True)
def nearest_centroid(ctx: BuildContext) -> list[Candidate]:
    """Router row d = mean router input of expert d (from DUME's statistics), bias −‖μ_d‖²/2."""
    stats, collect_cost, _ = ctx.statistics
    tokens = [int(n) for n in stats.token_counts.tolist()]
    with timed() as cost:
        model = _routed(ctx, ctx.upcycled(), nearest_centroid_weights(stats),
                        "nearest centroid of each expert's mean router input", tokens)
    return [Candidate("nearest_centroid", model, collect_cost + cost, info=_info("nearest_centroid", tokens))]


@register("mergekit_hidden", order=54)
def mergekit_hidden(ctx: BuildContext) -> list[Candidate]:
    """mergekit-moe ``gate_mode: hidden``, the weight-averaged dense model standing in for mergekit's base model."""
    with timed() as cost:
        dense = weight_average(ctx.experts, vocab=ctx.vocab, tokenizer=ctx.tokenizer)
        weights, sequences, tokens = hidden_gate_weights(dense, ctx.calibration_batches(), ctx.progress,
                                                         ctx.bf16_autocast, list(ctx.domains))
        del dense
        model = _routed(ctx, ctx.upcycled(), weights,
                        "mergekit-moe gate_mode hidden (normalised mean last-token hidden states)", tokens)
    cost.forward_tokens = sum(tokens)
    return [Candidate("mergekit_hidden", model, cost, info=_info("hidden", tokens, calibration_sequences=sequences))]


@register("mergekit_cheap_embed", order=56)
def mergekit_cheap_embed(ctx: BuildContext) -> list[Candidate]:
    """mergekit-moe ``gate_mode: cheap_embed``: normalised sums of the averaged input embeddings, no forward pass."""
    with timed() as cost:
        model = ctx.upcycled()
        weights, tokens = cheap_embed_weights(model.get_input_embeddings().weight, ctx.calibration_batches(),
                                              model.config.num_hidden_layers, list(ctx.domains))
        _routed(ctx, model, weights, "mergekit-moe gate_mode cheap_embed (normalised sums of token embeddings)",
                tokens)
    return [Candidate("mergekit_cheap_embed", model, cost, info=_info("cheap_embed", tokens))]
