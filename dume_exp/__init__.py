"""dume_exp: training-free dynamic upcycling of expert language models (DUME) and its baselines."""
from .moe import MoEBlock, dispatch_mode, force_expert, moe_blocks, reset_routing_counts, routing_counts, set_routing
from .ridge import RidgeSolver, RouterWeights, apply_router_weights, fit_routers
from .statistics import RouterStatistics, collect_statistics
from .upcycle import check_compatible, load_upcycled, upcycle, weight_average

__all__ = [
    "MoEBlock", "RidgeSolver", "RouterStatistics", "RouterWeights", "apply_router_weights",
    "check_compatible", "collect_statistics", "dispatch_mode", "fit_routers", "force_expert",
    "load_upcycled", "moe_blocks", "reset_routing_counts", "routing_counts", "set_routing",
    "upcycle", "weight_average",
]
