"""Every strategy a run can build and score, one module each (the three training-free peers of DUME share
:mod:`.training_free`), registered in :mod:`.registry` (``build(name, ctx) -> list[Candidate]``); what they
receive and return is in :mod:`.base`."""
from . import base_model, btx, dense_expert, dume, dume_plus, oracle, random_routing, training_free  # noqa: F401
from . import weight_average  # noqa: F401
from .base import BuildContext, Candidate, Cost, RouterConfig
from .registry import STRATEGIES, Role, build, register

__all__ = ["STRATEGIES", "BuildContext", "Candidate", "Cost", "Role", "RouterConfig", "build", "register"]
