"""Uniform average of every parameter, MLPs included: one dense model."""
from .registry import register
from ..method.upcycle import weight_average as average
from .base import BuildContext, Candidate, timed


@register("weight_average", order=30)
def weight_average(ctx: BuildContext) -> list[Candidate]:
    with timed() as cost:
        model = average(ctx.experts, vocab=ctx.vocab, tokenizer=ctx.tokenizer)
    return [Candidate("weight_average", model, cost)]
