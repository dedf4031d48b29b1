"""Routers left at their seeded random initialisation."""
from .registry import register
from .base import BuildContext, Candidate, timed


@register("random_routing", order=50, router_bias=True)
def random_routing(ctx: BuildContext) -> list[Candidate]:
    with timed() as cost:
        model = ctx.upcycled()
    return [Candidate("random_routing", model, cost, info={"seed": ctx.seed})]
