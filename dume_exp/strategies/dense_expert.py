"""Each dense expert alone (the reference point of every retention percentage)."""
from . import register
from .base import BuildContext, Candidate


@register("dense_expert")
def dense_expert(ctx: BuildContext) -> list[Candidate]:
    return [Candidate(f"expert:{domain}", expert, info={"expert": domain})
            for domain, expert in zip(ctx.domains, ctx.experts)]
