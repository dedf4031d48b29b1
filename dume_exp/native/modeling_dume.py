"""DUME causal LMs: a stock decoder (Llama, Mistral, Qwen2, Qwen3) whose every layer's MLP is an
:class:`MoEBlock`. Parameter names are the stock ones plus ``mlp.experts.<d>.*`` and ``mlp.router.*``.

Standalone (torch, transformers, huggingface_hub): ``save_pretrained`` copies this file and the ones it
imports next to the weights, so ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)``
rebuilds the model where ``dume_exp`` is not installed.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from transformers import LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM

from .configuration_dume import DumeLlamaConfig, DumeMistralConfig, DumeQwen2Config, DumeQwen3Config
from .model_card import render_model_card
from .moe_block import MoEBlock

DEFAULT_MAX_SHARD_SIZE = "5GB"
_WEIGHT_FILE_PREFIX = "model"


def moe_layout(config: Any) -> tuple[int, list[int], list[float]]:
    """Number of experts and each layer's top-k and temperature, from ``config.dume_moe``."""
    layout = getattr(config, "dume_moe", None)
    if not isinstance(layout, dict) or "num_experts" not in layout:
        raise ValueError(f"{type(config).__name__} has no 'dume_moe' layout (num_experts, top_k, temperature); "
                         "DUME models are built with dume_exp.upcycle(experts).")
    layers = config.num_hidden_layers

    def per_layer(key: str, default: float) -> list:
        value = layout.get(key, default)
        values = list(value) if isinstance(value, (list, tuple)) else [value] * layers
        if len(values) != layers:
            raise ValueError(f"dume_moe.{key} has {len(values)} values for {layers} layers.")
        return values

    return int(layout["num_experts"]), [int(k) for k in per_layer("top_k", 1)], \
        [float(t) for t in per_layer("temperature", 1.0)]


def _compact(values: list) -> Any:
    """One value when every layer has it, else the per-layer list."""
    return values[0] if len(set(values)) == 1 else list(values)


def _publish(staged: Path, target: Path) -> None:
    """Move the files of a finished save into ``target`` one by one (each ``os.replace`` is atomic), weights
    first and ``config.json`` last; stale weight shards of an earlier save are removed first."""
    target.mkdir(parents=True, exist_ok=True)
    new = {f.name for f in staged.iterdir()}
    for old in target.glob(f"{_WEIGHT_FILE_PREFIX}*.safetensors*"):
        if old.name not in new:
            old.unlink()
    for f in sorted(staged.iterdir(), key=lambda f: f.name == "config.json"):
        os.replace(f, target / f.name)


class DumeForCausalLMMixin:
    """Turns a stock ``...ForCausalLM`` into its DUME counterpart (mixed in before the stock class)."""

    stock_class: type

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        num, top_ks, temperatures = moe_layout(config)
        for layer, k, t in zip(self.model.layers, top_ks, temperatures):
            mlp = layer.mlp
            experts = [mlp, *(type(mlp)(config) for _ in range(num - 1))]
            layer.mlp = MoEBlock(experts, config.hidden_size, top_k=k, temperature=t)
        self.post_init()

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        """``PreTrainedModel.from_pretrained``, then the routing counters (not saved) start at zero."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        for layer in model.model.layers:
            layer.mlp.routing_counts.zero_()
        return loaded

    def dume_layout(self) -> dict[str, Any]:
        """The current layout of the blocks (what :meth:`save_pretrained` writes into ``config.dume_moe``)."""
        blocks = [layer.mlp for layer in self.model.layers]
        return {"num_experts": blocks[0].num_experts, "top_k": _compact([b.top_k for b in blocks]),
                "temperature": _compact([b.temperature for b in blocks])}

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, tokenizer: Any = None,
                        max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, **kwargs: Any) -> None:
        """``PreTrainedModel.save_pretrained`` with the blocks' current top-k / temperature, shards of at most
        5 GB, the tokenizer (when given) and a model card; files are written aside and moved in when complete."""
        if kwargs.get("push_to_hub"):
            raise ValueError("save_pretrained(push_to_hub=True) would replace the model card; use "
                             "model.push_to_hub(repo_id, tokenizer=...) instead.")
        self.config.dume_moe = self.dume_layout()
        if not kwargs.get("is_main_process", True):
            return super().save_pretrained(save_directory, *args, max_shard_size=max_shard_size, **kwargs)
        target = Path(save_directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
        try:
            super().save_pretrained(staged, *args, max_shard_size=max_shard_size, **kwargs)
            if tokenizer is not None:
                tokenizer.save_pretrained(staged)
            (staged / "README.md").write_text(render_model_card(self.config), encoding="utf-8")
            _publish(staged, target)
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def push_to_hub(self, repo_id: str, *, tokenizer: Any = None, api: Any = None, private: bool | None = None,
                    commit_message: str = "Upload DUME model", token: str | None = None) -> Any:
        """Save (weights, code, tokenizer, model card) and upload the folder with ``huggingface_hub.HfApi``
        (or ``api``, any object with ``create_repo`` and ``upload_folder``)."""
        if api is None:
            from huggingface_hub import HfApi

            api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, tokenizer=tokenizer)
            return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)


class DumeLlamaForCausalLM(DumeForCausalLMMixin, LlamaForCausalLM):
    config_class = DumeLlamaConfig
    stock_class = LlamaForCausalLM


class DumeMistralForCausalLM(DumeForCausalLMMixin, MistralForCausalLM):
    config_class = DumeMistralConfig
    stock_class = MistralForCausalLM


class DumeQwen2ForCausalLM(DumeForCausalLMMixin, Qwen2ForCausalLM):
    config_class = DumeQwen2Config
    stock_class = Qwen2ForCausalLM


class DumeQwen3ForCausalLM(DumeForCausalLMMixin, Qwen3ForCausalLM):
    config_class = DumeQwen3Config
    stock_class = Qwen3ForCausalLM


DUME_MODELS = (DumeLlamaForCausalLM, DumeMistralForCausalLM, DumeQwen2ForCausalLM, DumeQwen3ForCausalLM)
for _model_class in DUME_MODELS:
    _model_class.register_for_auto_class("AutoModelForCausalLM")
