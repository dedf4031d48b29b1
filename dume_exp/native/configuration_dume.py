"""Configurations of the DUME models: a stock decoder configuration plus the MoE layout.

``dume_moe`` holds ``num_experts``, ``top_k`` and ``temperature`` (a number, or one value per layer);
``dume_provenance`` (optional) records how the model was built, for its model card. Standalone
(transformers only): this file is saved next to every DUME model.
"""
from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config


class DumeLlamaConfig(LlamaConfig):
    model_type = "dume_llama"
    stock_model_type = "llama"


class DumeMistralConfig(MistralConfig):
    model_type = "dume_mistral"
    stock_model_type = "mistral"


class DumeQwen2Config(Qwen2Config):
    model_type = "dume_qwen2"
    stock_model_type = "qwen2"


class DumeQwen3Config(Qwen3Config):
    model_type = "dume_qwen3"
    stock_model_type = "qwen3"


DUME_CONFIGS = (DumeLlamaConfig, DumeMistralConfig, DumeQwen2Config, DumeQwen3Config)
for _config_class in DUME_CONFIGS:
    _config_class.register_for_auto_class()
