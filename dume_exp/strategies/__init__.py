"""Every strategy a run can build and score, one module each, registered in :mod:`.registry`
(``build(name, ctx) -> list[Candidate]``); what they receive and return is in :mod:`.base`."""
from . import base_model, btx, dense_expert, dume, dume_plus, oracle, random_routing, weight_average  # noqa: F401
from .base import BuildContext, Candidate, Cost, RouterConfig
from .registry import STRATEGIES, Role, build, register

__all__ = ["STRATEGIES", "BuildContext", "Candidate", "Cost", "Role", "RouterConfig", "build", "register"]
