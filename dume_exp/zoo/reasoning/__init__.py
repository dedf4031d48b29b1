"""Per-domain builders of the "reasoning" setting's offline data (see ``dume_exp.zoo.reasoning_data``)."""
