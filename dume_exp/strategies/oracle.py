"""Oracle routing: every token of domain d goes to expert d (an upper bound for any router)."""
from ..method.moe import force_expert
from .registry import Role, register
from .base import BuildContext, Candidate, timed


@register("oracle", order=40, role=Role.UPPER_BOUND)
def oracle(ctx: BuildContext) -> list[Candidate]:
    with timed() as cost:
        model = ctx.upcycled()
    index = {domain: d for d, domain in enumerate(ctx.domains)}
    return [Candidate("oracle", model, cost, route_domain=lambda m, domain: force_expert(m, index[domain]),
                      domain_routing="oracle")]
