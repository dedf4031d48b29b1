"""Routers left at their seeded random initialisation."""
from . import register
from .base import BuildContext, Candidate, timed


@register("random_routing")
def random_routing(ctx: BuildContext) -> list[Candidate]:
    with timed() as cost:
        model = ctx.upcycled()
    return [Candidate("random_routing", model, cost, info={"seed": ctx.seed})]
