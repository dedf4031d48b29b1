"""The model the experts were fine-tuned from (a reference row: how much each expert gained)."""
from transformers import AutoModelForCausalLM

from .registry import BASE_ROW, Role, register
from .base import BuildContext, Candidate, timed


@register("base_model", order=20, role=Role.REFERENCE)
def base_model(ctx: BuildContext) -> list[Candidate]:
    if ctx.base is None:
        raise ValueError("strategy base_model needs the experts' base model: set experts.base (hub id or folder); "
                         "the embedded zoo sets it.")
    dtype = next(ctx.experts[0].parameters()).dtype
    with timed() as cost:
        model = AutoModelForCausalLM.from_pretrained(str(ctx.base), dtype=dtype).eval()
    return [Candidate(BASE_ROW, model, cost)]
