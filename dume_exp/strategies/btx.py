"""BTX-style baseline: routers trained by gradient descent on the mixed domains, from random init."""
from __future__ import annotations

from collections.abc import Iterator

import torch

from ..native import annotate
from .router_training import TrainingCost, train_routers_cached, training_record
from .registry import checkpoint_row, register
from .base import BuildContext, Candidate, Cost, timed


def train(candidate: Candidate, ctx: BuildContext, name: str) -> Iterator[Candidate]:
    """Train ``candidate``'s routers in place (or load the identical earlier training) and yield the trained model
    with the cost of the training itself.

    With ``ctx.training.checkpoints``, one candidate ``<name>@<step>`` per checkpoint first, each costing the
    training up to that step: the one model holds that checkpoint's routers until the next candidate is asked for
    (score each before asking for the next). The plain ``<name>`` (the model after every step) follows only when
    its step is not a checkpoint, so no model is scored twice.
    """
    result, cached = train_routers_cached(candidate.model, ctx.training_batches(), ctx.training, progress=ctx.progress)
    start = "the ridge solution" if name == "dume_plus" else "random init"
    annotate(candidate.model, router={"method": "trained", "description": f"trained by gradient descent for "
                                      f"{result.steps} steps from {start}"})
    info = {**candidate.info, "steps": result.steps, "final_loss": result.final_loss,
            "training": training_record(ctx.training), "training_cached": cached}
    if result.checkpoints:
        yield from _checkpoint_candidates(candidate, result, info, name)
    if result.steps not in ctx.training.checkpoints:
        cost = candidate.cost + Cost(result.wall_s, result.tokens, result.tokens)
        yield Candidate(name, candidate.model, cost, info=info)


def _checkpoint_candidates(candidate: Candidate, result: TrainingCost, info: dict, name: str) -> Iterator[Candidate]:
    """One candidate per checkpoint, the routers of ``candidate.model`` swapped to that checkpoint's while it is
    scored; afterwards the model holds the final routers again."""
    params = dict(candidate.model.named_parameters())
    final = {n: params[n].detach().clone() for n in result.checkpoints[0].state}

    def load(state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, tensor in state.items():
                params[n].copy_(tensor)

    for ck in result.checkpoints:
        load(ck.state)
        cost = candidate.cost + Cost(ck.wall_s, ck.tokens, ck.tokens)
        yield Candidate(checkpoint_row(name, ck.step), candidate.model, cost,
                        info={**info, "checkpoint": ck.step, "tokens": ck.tokens})
    load(final)


@register("btx", order=70, router_bias=True)
def btx(ctx: BuildContext) -> Iterator[Candidate]:
    with timed() as cost:
        model = ctx.upcycled()
    yield from train(Candidate("btx", model, cost), ctx, "btx")
