"""Exact export of a DUME model to a stock transformers MoE class (Mixtral, Qwen2-MoE), so that engines which know
those classes (vLLM, llama.cpp's converter, the Hub's widgets) serve it without DUME's modeling code.

The checkpoint is written by the stock class's own ``save_pretrained``: the per-expert tensor names those engines
read (``block_sparse_moe.experts.<e>.w1/w2/w3`` for Mixtral, ``mlp.experts.<e>.gate_proj/...`` for Qwen2-MoE), in
shards of at most 5 GB with an index, plus the tokenizer and a model card.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedModel

from ..method.moe import moe_blocks
from ..method.upcycle import load_upcycled
from ..native import is_native
from ..native.model_card import render_model_card
from ..utils.folders import check_replaceable, replace_folder
from .architectures import ARCHITECTURES, ExportError, StockMoE

__all__ = ["ARCHITECTURES", "ExportError", "export_moe", "to_stock_moe"]


def _check_exportable(model: PreTrainedModel, arch: StockMoE) -> int:
    """The model's common top-k, after refusing what ``arch`` cannot represent exactly."""
    if not is_native(model):
        raise ExportError(f"{type(model).__name__} is not a DUME model; build one with dume_exp.upcycle(experts).")
    source = model.config.stock_model_type
    if source not in arch.sources:
        fits = sorted(a.name for a in ARCHITECTURES.values() if source in a.sources)
        raise ExportError(f"--arch {arch.name} takes {'/'.join(arch.sources)} experts; these are {source} experts"
                          + (f" (use --arch {fits[0]})." if fits else " (no stock MoE class fits; keep the native "
                                                                       "DUME format)."))
    arch.check(model.config)
    blocks = moe_blocks(model)
    biased = [i for i, b in enumerate(blocks) if torch.count_nonzero(b.router.bias)]
    if biased:
        raise ExportError(
            f"The routers of layers {biased} have a bias, which {arch.model_class.__name__} cannot represent (its "
            "router is a bias-free linear map). Either refit the routers without one (router.bias=false in the app, "
            "RidgeSolver(stats, bias=False) in the library; it reuses the same statistics), or keep the native DUME "
            "format (loaded with trust_remote_code=True).")
    top_ks = sorted({b.top_k for b in blocks})
    if len(top_ks) > 1:
        raise ExportError(f"The layers route to different numbers of experts {top_ks}; "
                          f"{arch.model_class.__name__} has one top-k for every layer.")
    return top_ks[0]


def to_stock_moe(model: PreTrainedModel, arch: str = "mixtral") -> PreTrainedModel:
    """The stock ``arch`` model computing exactly what ``model`` (a DUME model) computes; tensors are copied."""
    if arch not in ARCHITECTURES:
        raise ExportError(f"Unknown --arch {arch!r}; choose from {sorted(ARCHITECTURES)}.")
    stock = ARCHITECTURES[arch]
    top_k = _check_exportable(model, stock)
    blocks = moe_blocks(model)
    config = stock.config(model.config, blocks[0].num_experts, top_k)
    dtype = next(model.parameters()).dtype
    state = {k: v for k, v in model.state_dict().items() if ".mlp." not in k}
    for i, block in enumerate(blocks):
        state.update({f"model.layers.{i}.mlp.{k}": v for k, v in stock.moe_tensors(block).items()})
    with torch.device("meta"):
        out = stock.model_class(config)
    out.load_state_dict({k: v.detach().to(dtype).clone() for k, v in state.items()}, strict=True, assign=True)
    if config.tie_word_embeddings:
        out.tie_weights()
    for name, buffer in list(out.named_buffers()):  # non-persistent ones (rotary frequencies) are still on meta
        if buffer.is_meta:
            owner, _, leaf = name.rpartition(".")
            out.get_submodule(owner).register_buffer(leaf, model.get_buffer(name).clone(), persistent=False)
    out.config.dtype = dtype
    if getattr(model, "generation_config", None) is not None:
        out.generation_config = model.generation_config
    return out.eval()


def _card(model: PreTrainedModel, stock: PreTrainedModel) -> str:
    loading = ["```python", "from transformers import AutoModelForCausalLM",
               "model = AutoModelForCausalLM.from_pretrained(path)", "```", "",
               f"An exact conversion of the DUME model to the stock `{type(stock).__name__}` class (router weights "
               "divided by the routing temperature; no router bias), so transformers, vLLM and llama.cpp's "
               "converter load it without extra code."]
    return render_model_card(model.config, loading=loading)


def export_moe(model: PreTrainedModel | str | Path, out: str | Path, arch: str = "mixtral", tokenizer: Any = None,
               max_shard_size: str = "5GB") -> Path:
    """Write ``model`` (a DUME model or its saved folder) as a stock ``arch`` checkpoint folder ``out``, with the
    tokenizer (``tokenizer``, else the one saved with the folder) and a model card. ``out`` is replaced atomically:
    a failed export leaves it as it was."""
    out = Path(out)
    check_replaceable(out)
    if not isinstance(model, PreTrainedModel):
        folder = Path(model)
        model = load_upcycled(folder)
        if tokenizer is None and any(folder.glob("tokenizer*")):
            tokenizer = AutoTokenizer.from_pretrained(folder)
    stock = to_stock_moe(model, arch)

    def write(folder: Path) -> None:
        stock.save_pretrained(folder, max_shard_size=max_shard_size)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        (folder / "README.md").write_text(_card(model, stock))

    replace_folder(out, write)
    return out
