"""dume_exp: training-free dynamic upcycling of expert language models (DUME) and its baselines.

Importing it registers the native DUME classes (``model_type`` ``dume_llama``, ``dume_mistral``, ``dume_qwen2``,
``dume_qwen3``) with ``AutoConfig`` and ``AutoModelForCausalLM``.
"""
from .method.moe import MoEBlock, dispatch_mode, force_expert, moe_blocks, reset_routing_counts, routing_counts, set_routing
from .native import NATIVE_MODELS, annotate, is_native
from .native.modeling_dume import (DumeLlamaForCausalLM, DumeMistralForCausalLM, DumeQwen2ForCausalLM,
                                   DumeQwen3ForCausalLM)
from .method.ridge import RidgeSolver, RouterWeights, apply_router_weights, fit_routers
from .method.router_statistics import RouterStatistics, collect_statistics
from .method.upcycle import check_compatible, load_upcycled, shared_vocab_rows, upcycle, weight_average

__all__ = [
    "DumeLlamaForCausalLM", "DumeMistralForCausalLM", "DumeQwen2ForCausalLM", "DumeQwen3ForCausalLM",
    "MoEBlock", "NATIVE_MODELS", "RidgeSolver", "RouterStatistics", "RouterWeights", "annotate",
    "apply_router_weights", "check_compatible", "collect_statistics", "dispatch_mode", "fit_routers",
    "force_expert", "is_native", "load_upcycled", "moe_blocks", "reset_routing_counts", "routing_counts",
    "set_routing", "shared_vocab_rows", "upcycle", "weight_average",
]
