"""BTX-style baseline: routers trained by gradient descent on the mixed domains, from random init."""
from dataclasses import asdict

from .router_training import train_routers_cached
from .registry import register
from .base import BuildContext, Candidate, Cost, timed


def train(candidate: Candidate, ctx: BuildContext, name: str) -> Candidate:
    """Train ``candidate``'s routers in place (or load the identical earlier training) and account for the
    cost of the training itself."""
    result, cached = train_routers_cached(candidate.model, ctx.training_batches(), ctx.training, progress=ctx.progress)
    cost = candidate.cost + Cost(result.wall_s, result.tokens, result.tokens)
    info = {**candidate.info, "steps": result.steps, "final_loss": result.final_loss, "training": asdict(ctx.training),
            "training_cached": cached}
    return Candidate(name, candidate.model, cost, info=info)


@register("btx", order=70)
def btx(ctx: BuildContext) -> list[Candidate]:
    with timed() as cost:
        model = ctx.upcycled()
    return [train(Candidate("btx", model, cost), ctx, "btx")]
