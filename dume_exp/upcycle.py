"""MoErging by module surgery on a stock ``transformers`` causal LM.

The merged model keeps its class (``LlamaForCausalLM``, ``Qwen2ForCausalLM``, ...): every
non-MLP parameter is the mean of the experts', and each ``model.model.layers[i].mlp`` becomes a
:class:`~dume_exp.moe.MoEBlock` whose expert ``d`` is a copy of expert model ``d``'s MLP.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from .moe import MoEBlock, moe_blocks

#: Config attribute under which the MoE layout is stored (it survives ``save_pretrained``).
CONFIG_KEY = "dume_moe"

# Config entries that record provenance, not architecture.
_IGNORED_CONFIG_KEYS = {
    "_name_or_path", "name_or_path", "transformers_version", "dtype", "torch_dtype",
    "_commit_hash", "architectures", "_attn_implementation_autoset", "output_attentions",
    "output_hidden_states", "return_dict", "use_cache",
}
# Checked first so the error names the most telling difference.
_PRIORITY_CONFIG_KEYS = (
    "model_type", "vocab_size", "num_hidden_layers", "hidden_size", "intermediate_size",
    "num_attention_heads", "num_key_value_heads", "head_dim", "tie_word_embeddings",
)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """``model.model.layers`` with a clear error for unsupported layouts."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not all(hasattr(layer, "mlp") for layer in layers):
        raise ValueError(
            f"{type(model).__name__} is not a supported decoder: dume_exp expects a causal LM with "
            "`model.model.layers[i].mlp` (Llama, Mistral, Qwen2 and similar families)."
        )
    return layers


def check_compatible(experts: Sequence[PreTrainedModel]) -> None:
    """Raise ``ValueError`` naming the first field in which an expert differs from expert 0."""
    if len(experts) < 1:
        raise ValueError("upcycle needs at least one expert model; got an empty list.")
    ref = experts[0]
    decoder_layers(ref)
    if moe_blocks(ref):
        raise ValueError("Expert 0 is already an upcycled MoE model; pass the dense expert models.")
    ref_cfg = ref.config.to_dict()
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    for i, other in enumerate(experts[1:], start=1):
        def fail(field: str, a: object, b: object) -> None:
            raise ValueError(
                f"Experts 0 and {i} are not the same architecture: {field} differs "
                f"({a!r} vs {b!r}). DUME merges experts fine-tuned from one base model."
            )

        if type(other) is not type(ref):
            fail("model class", type(ref).__name__, type(other).__name__)
        if moe_blocks(other):
            raise ValueError(f"Expert {i} is already an upcycled MoE model; pass the dense expert models.")
        cfg = other.config.to_dict()
        keys = list(_PRIORITY_CONFIG_KEYS) + sorted((set(ref_cfg) | set(cfg)) - set(_PRIORITY_CONFIG_KEYS))
        for key in keys:
            if key in _IGNORED_CONFIG_KEYS:
                continue
            if ref_cfg.get(key) != cfg.get(key):
                fail(f"config.{key}", ref_cfg.get(key), cfg.get(key))
        shapes = {k: tuple(v.shape) for k, v in other.state_dict().items()}
        for name in sorted(set(ref_shapes) | set(shapes)):
            if ref_shapes.get(name) != shapes.get(name):
                fail(f"parameter {name} shape", ref_shapes.get(name), shapes.get(name))


@contextlib.contextmanager
def dense_view(model: PreTrainedModel) -> Iterator[PreTrainedModel]:
    """Temporarily show an upcycled model as a dense one (expert 0's MLPs, no MoE layout), e.g. to check
    a new expert's compatibility; nothing is copied and everything is restored on exit."""
    layers = decoder_layers(model)
    blocks = [layer.mlp for layer in layers]
    layout = getattr(model.config, CONFIG_KEY)
    for layer, block in zip(layers, blocks):
        layer.mlp = block.experts[0]
    delattr(model.config, CONFIG_KEY)
    try:
        yield model
    finally:
        for layer, block in zip(layers, blocks):
            layer.mlp = block
        setattr(model.config, CONFIG_KEY, layout)


def _mlp_parameter_ids(model: nn.Module) -> set[int]:
    return {id(p) for layer in decoder_layers(model) for p in layer.mlp.parameters()}


@torch.no_grad()
def _average_parameters(target: nn.Module, experts: Sequence[nn.Module], skip: set[int]) -> None:
    """Set every parameter of ``target`` not in ``skip`` to the experts' mean (tied ones once)."""
    sources = [dict(e.named_parameters()) for e in experts]
    for name, param in target.named_parameters():
        if id(param) in skip:
            continue
        acc_dtype = torch.float32 if param.dtype in (torch.float16, torch.bfloat16) else param.dtype
        acc = torch.zeros(param.shape, dtype=acc_dtype, device=param.device)
        for src in sources:
            acc += src[name].to(device=param.device, dtype=acc_dtype)
        param.copy_(acc / len(experts))


def _init_router(router: nn.Linear, generator: torch.Generator) -> None:
    """``nn.Linear``'s default initialisation, drawn from an explicit generator."""
    with torch.no_grad():
        nn.init.kaiming_uniform_(router.weight, a=math.sqrt(5), generator=generator)
        bound = 1.0 / math.sqrt(router.in_features)
        nn.init.uniform_(router.bias, -bound, bound, generator=generator)


def _install_moe_blocks(
    model: PreTrainedModel,
    mlps_per_layer: Sequence[Sequence[nn.Module]],
    top_k: int,
    temperature: float,
    seed: int,
) -> None:
    hidden = model.config.hidden_size
    generator = torch.Generator().manual_seed(seed)
    ref = next(model.parameters())
    for layer, mlps in zip(decoder_layers(model), mlps_per_layer):
        block = MoEBlock(mlps, hidden, top_k=top_k, temperature=temperature)
        _init_router(block.router, generator)
        layer.mlp = block.to(device=ref.device, dtype=ref.dtype)
    setattr(model.config, CONFIG_KEY, {
        "num_experts": len(mlps_per_layer[0]), "top_k": top_k, "temperature": temperature,
    })


def upcycle(
    experts: Sequence[PreTrainedModel],
    top_k: int = 1,
    temperature: float = 1.0,
    seed: int = 0,
) -> PreTrainedModel:
    """Merge dense experts of one architecture into a mixture-of-experts model of the same class.

    Non-MLP weights are averaged; layer ``i``'s MLP becomes an :class:`MoEBlock` whose expert ``d``
    is a copy of ``experts[d].model.layers[i].mlp``; routers get a seeded random init (fit them
    with :func:`dume_exp.fit_routers`). The input models are not modified.
    """
    check_compatible(experts)
    merged = copy.deepcopy(experts[0])
    _average_parameters(merged, experts, skip=_mlp_parameter_ids(merged))
    mlps = [[copy.deepcopy(layer.mlp) for layer in decoder_layers(e)] for e in experts]
    _install_moe_blocks(merged, list(zip(*mlps)), top_k, temperature, seed)
    return merged


def weight_average(experts: Sequence[PreTrainedModel]) -> PreTrainedModel:
    """Uniform average of every parameter (MLPs included): one dense model."""
    check_compatible(experts)
    merged = copy.deepcopy(experts[0])
    _average_parameters(merged, experts, skip=set())
    return merged


def _read_safetensors_dir(path: Path) -> dict[str, torch.Tensor]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        shards = ["model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        file = path / shard
        if not file.exists():
            raise FileNotFoundError(f"{file} is missing; save the model with model.save_pretrained({str(path)!r}).")
        state.update(load_file(str(file)))
    return state


def load_upcycled(path: str | Path, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """Reload a model saved with ``upcycle(...).save_pretrained(path)``.

    ``from_pretrained`` alone would build dense MLPs; this rebuilds the MoE blocks from the
    ``dume_moe`` entry of ``config.json`` and then loads the safetensors weights strictly.
    """
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"No config.json in {path}; expected a folder written by save_pretrained.")
    config = AutoConfig.from_pretrained(path)
    layout = getattr(config, CONFIG_KEY, None)
    if not layout:
        raise ValueError(f"{path} holds a dense model (config has no {CONFIG_KEY!r}); load it with from_pretrained.")
    state = _read_safetensors_dir(path)
    dtype = dtype or next(iter(state.values())).dtype
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    template = [layer.mlp for layer in decoder_layers(model)]
    mlps = [[copy.deepcopy(t) for _ in range(layout["num_experts"])] for t in template]
    _install_moe_blocks(model, mlps, layout["top_k"], layout["temperature"], seed=0)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    if unexpected or set(missing) - tied:
        raise ValueError(
            f"{path} does not match its config: missing {sorted(set(missing) - tied)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}."
        )
    model.tie_weights()
    return model.eval()
