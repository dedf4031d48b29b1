"""The native DUME model classes, registered with ``AutoConfig`` / ``AutoModelForCausalLM`` on import.

:data:`NATIVE_MODELS` is the registry: stock ``model_type`` → DUME class. :func:`to_native` turns a stock
model whose MLPs were replaced by MoE blocks into the DUME class without copying weights.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from .configuration_dume import DUME_CONFIGS
from .modeling_dume import DUME_MODELS, DumeForCausalLMMixin, moe_layout

NATIVE_MODELS: dict[str, type[PreTrainedModel]] = {cls.config_class.stock_model_type: cls for cls in DUME_MODELS}
NATIVE_MODEL_TYPES = {cls.model_type for cls in DUME_CONFIGS}
#: Config entries of the stock model that the DUME config does not inherit.
_NOT_INHERITED = ("model_type", "architectures", "auto_map", "transformers_version", "_name_or_path")

for _cls in DUME_MODELS:
    AutoConfig.register(_cls.config_class.model_type, _cls.config_class, exist_ok=True)
    AutoModelForCausalLM.register(_cls.config_class, _cls, exist_ok=True)


def native_class(model_type: str) -> type[PreTrainedModel]:
    """The DUME class for a stock ``model_type``, with a clear error for unsupported families."""
    if model_type not in NATIVE_MODELS:
        raise ValueError(f"dume_exp has no native DUME class for model_type {model_type!r}; supported: "
                         f"{sorted(NATIVE_MODELS)}.")
    return NATIVE_MODELS[model_type]


def native_config(stock: PretrainedConfig, layout: dict[str, Any],
                  provenance: dict[str, Any] | None = None) -> PretrainedConfig:
    """The DUME configuration of a stock configuration plus an MoE layout."""
    fields = {k: v for k, v in stock.to_dict().items() if k not in _NOT_INHERITED}
    fields.update(dume_moe=dict(layout), dume_provenance=dict(provenance or {}))
    config = native_class(stock.model_type).config_class(**fields)
    moe_layout(config)  # validate
    return config


def is_native(model: Any) -> bool:
    return isinstance(model, DumeForCausalLMMixin) or getattr(model.config, "model_type", None) in NATIVE_MODEL_TYPES


def save_model(model: PreTrainedModel, tokenizer: Any, folder: str | os.PathLike) -> Path:
    """``model`` with its tokenizer in ``folder``: a DUME model as a native folder (modeling code, model card),
    any other model as transformers saves it."""
    if is_native(model):
        model.save_pretrained(folder, tokenizer=tokenizer)
    else:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return Path(folder)


@torch.no_grad()
def to_native(model: PreTrainedModel, layout: dict[str, Any],
              provenance: dict[str, Any] | None = None) -> PreTrainedModel:
    """The DUME-class model holding ``model``'s tensors (shared, not copied): ``model`` must already have
    the DUME module tree (each layer's ``mlp`` an MoE block), as :func:`dume_exp.upcycle` builds it."""
    config = native_config(model.config, layout, provenance)
    with torch.device("meta"):
        native = native_class(model.config.model_type)(config)
    native.load_state_dict(model.state_dict(), strict=True, assign=True)
    own = dict(native.named_buffers())
    for name, buffer in model.named_buffers():
        if own[name].is_meta:  # non-persistent buffers (rotary frequencies, routing counts) are not in state_dict
            native.get_submodule(name.rpartition(".")[0]).register_buffer(
                name.rpartition(".")[2], buffer, persistent=False)
    native.tie_weights()
    native.generation_config = model.generation_config
    return native.train(model.training)


def annotate(model: PreTrainedModel, **sections: Any) -> None:
    """Record how the model was built (``experts``, ``domains``, ``router``, ``calibration``, ``retention``,
    ``license``) in ``config.dume_provenance``, for the model card."""
    if not is_native(model):
        return
    prov = dict(getattr(model.config, "dume_provenance", None) or {})
    prov.update({k: v for k, v in sections.items() if v is not None})
    model.config.dume_provenance = prov


def annotate_saved(folder: str | os.PathLike, **sections: Any) -> None:
    """:func:`annotate` a saved DUME folder: ``config.json`` and its model card are rewritten (each atomically)."""
    from .model_card import render_model_card

    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder)
    prov = dict(getattr(config, "dume_provenance", None) or {})
    prov.update({k: v for k, v in sections.items() if v is not None})
    config.dume_provenance = prov
    for name, text in (("config.json", config.to_json_string()), ("README.md", render_model_card(config))):
        tmp = folder / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, folder / name)


__all__ = ["NATIVE_MODELS", "NATIVE_MODEL_TYPES", "annotate", "annotate_saved", "is_native", "native_class",
           "native_config", "to_native"]
