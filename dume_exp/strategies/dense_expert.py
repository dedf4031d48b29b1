"""Each dense expert alone (the reference point of every retention percentage)."""
from .registry import Role, expert_row, register
from .base import BuildContext, Candidate


@register("dense_expert", order=10, role=Role.REFERENCE)
def dense_expert(ctx: BuildContext) -> list[Candidate]:
    return [Candidate(expert_row(domain), expert, info={"expert": domain})
            for domain, expert in zip(ctx.domains, ctx.experts)]
