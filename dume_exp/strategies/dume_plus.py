"""DUME+: the ridge routers as initialisation, then the same router training as BTX."""
from collections.abc import Iterator

from .registry import register
from .base import BuildContext, Candidate
from .btx import train
from .dume import dume_model


@register("dume_plus", order=80, router_bias=True)
def dume_plus(ctx: BuildContext) -> Iterator[Candidate]:
    yield from train(dume_model(ctx), ctx, "dume_plus")
