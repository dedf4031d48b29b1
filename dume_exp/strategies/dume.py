"""DUME: closed-form ridge routers from hidden-state statistics, no gradient steps."""
from ..ridge import fit_routers
from . import register
from .base import BuildContext, Candidate, timed


def dume_model(ctx: BuildContext) -> Candidate:
    stats, collect_cost = ctx.statistics
    with timed() as cost:
        model = ctx.upcycled()
        fit_routers(model, stats, lam=ctx.router.lam, normalize=ctx.router.normalize)
    return Candidate("dume", model, collect_cost + cost,
                     info={"lam": ctx.router.lam, "calibration_tokens": stats.token_counts.tolist()})


@register("dume")
def dume(ctx: BuildContext) -> list[Candidate]:
    return [dume_model(ctx)]
