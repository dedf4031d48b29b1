"""MoErging by module surgery on stock ``transformers`` causal LMs, returning the native DUME class.

Every non-MLP parameter of the merged model is the mean of the experts', and each
``model.model.layers[i].mlp`` becomes a :class:`~dume_exp.method.moe.MoEBlock` whose expert ``d`` is a copy of
expert model ``d``'s MLP. The result is a :mod:`dume_exp.native` model (``DumeLlamaForCausalLM``, ...):
``save_pretrained`` writes a folder that ``AutoModelForCausalLM.from_pretrained`` rebuilds exactly.

Experts whose vocabularies differ only in their number of embedding rows (fine-tunes that added padding
rows) are merged on the rows they share (``vocab="align"``, the default; ``"strict"`` refuses them).
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from ..utils.integrity import check_finite_parameters
from .moe import MoEBlock, moe_blocks
from ..native import NATIVE_MODEL_TYPES, NATIVE_MODELS, native_class, native_config, to_native

log = logging.getLogger(__name__)

#: Config attribute under which the MoE layout is stored (it survives ``save_pretrained``).
CONFIG_KEY = "dume_moe"
VOCAB_MODES = ("align", "strict")

# Config entries that record provenance or the MoE layout, not the dense architecture.
_IGNORED_CONFIG_KEYS = {
    "_name_or_path", "name_or_path", "transformers_version", "dtype", "torch_dtype",
    "_commit_hash", "architectures", "_attn_implementation_autoset", "output_attentions",
    "output_hidden_states", "return_dict", "use_cache", "auto_map", CONFIG_KEY, "dume_provenance",
}
# Checked first so the error names the most telling difference.
_PRIORITY_CONFIG_KEYS = (
    "model_type", "vocab_size", "num_hidden_layers", "hidden_size", "intermediate_size",
    "num_attention_heads", "num_key_value_heads", "head_dim", "tie_word_embeddings",
)
_VOCAB_HINT = " Experts that differ only in their number of vocabulary rows merge with vocab='align' (experts.vocab=align)."


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


def _vocab_parameter_names(model: PreTrainedModel) -> set[str]:
    """Names of the parameters with one row per vocabulary entry (input embeddings, lm_head and its bias)."""
    out = model.get_output_embeddings()
    tensors = [model.get_input_embeddings().weight]
    if out is not None:
        tensors += [t for t in (out.weight, getattr(out, "bias", None)) if t is not None]
    ids = {id(t) for t in tensors}
    return {n for n, p in model.named_parameters(remove_duplicate=False) if id(p) in ids}


def vocab_rows(model: PreTrainedModel) -> int:
    """The number of vocabulary rows every vocabulary-sized parameter of ``model`` has."""
    params = dict(model.named_parameters(remove_duplicate=False))
    return min(params[n].shape[0] for n in _vocab_parameter_names(model))


def _expert_name(model: PreTrainedModel, index: int) -> str:
    path = getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "")
    return f"expert {index} ({path})" if path else f"expert {index}"


def _check_vocab_mode(vocab: str) -> None:
    if vocab not in VOCAB_MODES:
        raise ValueError(f"vocab must be one of {VOCAB_MODES}; got {vocab!r}.")


def shared_vocab_rows(experts: Sequence[PreTrainedModel], vocab: str = "align", tokenizer: Any = None) -> int:
    """The vocabulary rows the merge keeps: every expert's with ``"strict"``, the smallest count with ``"align"``
    (warning for each expert that loses rows; refusing when a dropped row is a token of ``tokenizer``)."""
    _check_vocab_mode(vocab)
    rows = [vocab_rows(e) for e in experts]
    kept = min(rows)
    if vocab == "strict" or len(set(rows)) == 1:
        return kept
    if tokenizer is not None and len(tokenizer) > kept:
        smallest = _expert_name(experts[rows.index(kept)], rows.index(kept))
        raise ValueError(
            f"Cannot align the vocabularies: the tokenizer has {len(tokenizer)} tokens but {smallest} has only "
            f"{kept} embedding rows, so tokens {kept}..{len(tokenizer) - 1} would lose their embeddings. Use experts "
            "that share the tokenizer's vocabulary (or a tokenizer of at most that many tokens).")
    for i, (expert, n) in enumerate(zip(experts, rows)):
        if n > kept:
            warnings.warn(f"{_expert_name(expert, i)} has {n} vocabulary rows; merging on the {kept} rows all "
                          f"experts share drops its last {n - kept}.", stacklevel=3)
    return kept


def _architecture(model: PreTrainedModel) -> tuple[type, dict[str, Any]]:
    """The stock model class and config of ``model`` (a DUME model shows those of its dense experts)."""
    cfg = model.config.to_dict()
    if cfg.get("model_type") in NATIVE_MODEL_TYPES:
        cfg["model_type"] = model.config.stock_model_type
    return getattr(type(model), "stock_class", type(model)), cfg


def check_finite_experts(experts: Sequence[PreTrainedModel]) -> None:
    """Raise :class:`~dume_exp.utils.integrity.NonFiniteError` naming the first expert and parameter holding NaN or inf."""
    for i, expert in enumerate(experts):
        check_finite_parameters(expert, _expert_name(expert, i))


def check_compatible(experts: Sequence[PreTrainedModel], vocab: str = "strict") -> None:
    """Raise ``ValueError`` naming the first field in which an expert differs from expert 0 (with
    ``vocab="align"`` the number of vocabulary rows may differ)."""
    if len(experts) < 1:
        raise ValueError("upcycle needs at least one expert model; got an empty list.")
    _check_vocab_mode(vocab)
    ref = experts[0]
    decoder_layers(ref)
    if moe_blocks(ref):
        raise ValueError("Expert 0 is already an upcycled MoE model; pass the dense expert models.")
    ref_cls, ref_cfg = _architecture(ref)
    vocab_names = _vocab_parameter_names(ref) if vocab == "align" else set()
    ignored = _IGNORED_CONFIG_KEYS | ({"vocab_size"} if vocab == "align" else set())

    def shapes(model: PreTrainedModel) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape)[1:] if k in vocab_names else tuple(v.shape) for k, v in model.state_dict().items()}

    ref_shapes = shapes(ref)
    for i, other in enumerate(experts[1:], start=1):
        def fail(field: str, a: object, b: object, hint: str = "") -> None:
            raise ValueError(
                f"Experts 0 and {i} are not the same architecture: {field} differs "
                f"({a!r} vs {b!r}). DUME merges experts fine-tuned from one base model.{hint}"
            )

        other_cls, cfg = _architecture(other)
        if other_cls is not ref_cls:
            fail("model class", ref_cls.__name__, other_cls.__name__)
        if moe_blocks(other):
            raise ValueError(f"Expert {i} is already an upcycled MoE model; pass the dense expert models.")
        keys = list(_PRIORITY_CONFIG_KEYS) + sorted((set(ref_cfg) | set(cfg)) - set(_PRIORITY_CONFIG_KEYS))
        for key in keys:
            if key not in ignored and ref_cfg.get(key) != cfg.get(key):
                fail(f"config.{key}", ref_cfg.get(key), cfg.get(key), _VOCAB_HINT if key == "vocab_size" else "")
        other_shapes = shapes(other)
        for name in sorted(set(ref_shapes) | set(other_shapes)):
            if ref_shapes.get(name) != other_shapes.get(name):
                fail(f"parameter {name} shape", ref_shapes.get(name), other_shapes.get(name))


@contextlib.contextmanager
def dense_view(model: PreTrainedModel) -> Iterator[PreTrainedModel]:
    """Temporarily show an upcycled model as a dense one (expert 0's MLPs), e.g. to check a new expert's
    compatibility; nothing is copied and everything is restored on exit."""
    layers = decoder_layers(model)
    blocks = [layer.mlp for layer in layers]
    for layer, block in zip(layers, blocks):
        layer.mlp = block.experts[0]
    try:
        yield model
    finally:
        for layer, block in zip(layers, blocks):
            layer.mlp = block


@torch.no_grad()
def truncate_vocab(model: PreTrainedModel, rows: int) -> None:
    """Keep the first ``rows`` rows of ``model``'s vocabulary-sized parameters, in place (ties kept)."""
    emb, out = model.get_input_embeddings(), model.get_output_embeddings()
    tied = out is not None and out.weight is emb.weight
    if emb.weight.shape[0] > rows:
        emb.weight = nn.Parameter(emb.weight[:rows].clone(), requires_grad=emb.weight.requires_grad)
        emb.num_embeddings = rows
    if out is not None:
        if tied:
            out.weight = emb.weight
        elif out.weight.shape[0] > rows:
            out.weight = nn.Parameter(out.weight[:rows].clone(), requires_grad=out.weight.requires_grad)
        if getattr(out, "bias", None) is not None and out.bias.shape[0] > rows:
            out.bias = nn.Parameter(out.bias[:rows].clone(), requires_grad=out.bias.requires_grad)
        if hasattr(out, "out_features"):
            out.out_features = rows
    model.config.vocab_size = rows


def _mlp_parameter_ids(model: nn.Module) -> set[int]:
    return {id(p) for layer in decoder_layers(model) for p in layer.mlp.parameters()}


@torch.no_grad()
def _average_parameters(target: nn.Module, experts: Sequence[nn.Module], skip: set[int]) -> None:
    """Set every parameter of ``target`` not in ``skip`` to the experts' mean (tied ones once); vocabulary rows
    beyond the target's are left out."""
    sources = [dict(e.named_parameters()) for e in experts]
    for name, param in target.named_parameters():
        if id(param) in skip:
            continue
        acc_dtype = torch.float32 if param.dtype in (torch.float16, torch.bfloat16) else param.dtype
        acc = torch.zeros(param.shape, dtype=acc_dtype, device=param.device)
        for src in sources:
            acc += src[name][: param.shape[0]].to(device=param.device, dtype=acc_dtype)
        param.copy_(acc / len(experts))


def _dense_merge(experts: Sequence[PreTrainedModel], skip_mlps: bool, vocab: str, tokenizer: Any) -> PreTrainedModel:
    """A copy of expert 0 cut to the shared vocabulary, with the experts' mean in every parameter (but the
    MLPs with ``skip_mlps``); the experts must have passed :func:`check_compatible`."""
    rows = shared_vocab_rows(experts, vocab, tokenizer)
    merged = copy.deepcopy(experts[0])
    truncate_vocab(merged, rows)
    _average_parameters(merged, experts, skip=_mlp_parameter_ids(merged) if skip_mlps else set())
    return merged


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
) -> dict[str, Any]:
    """Replace each layer's MLP by an MoE block of ``mlps_per_layer[i]``; returns the layout."""
    hidden = model.config.hidden_size
    generator = torch.Generator().manual_seed(seed)
    ref = next(model.parameters())
    for layer, mlps in zip(decoder_layers(model), mlps_per_layer):
        block = MoEBlock(mlps, hidden, top_k=top_k, temperature=temperature)
        _init_router(block.router, generator)
        layer.mlp = block.to(device=ref.device, dtype=ref.dtype)
    return {"num_experts": len(mlps_per_layer[0]), "top_k": top_k, "temperature": temperature}


def _license(path: str) -> str | None:
    """The ``license`` of a local model folder's model card, when it has one."""
    from huggingface_hub import ModelCard

    readme = Path(path) / "README.md" if path else None
    if readme is None or not readme.is_file():
        return None
    try:
        return ModelCard.load(readme).data.license
    except Exception:  # a README without a YAML header is not a model card
        return None


def _provenance(experts: Sequence[PreTrainedModel]) -> dict[str, Any]:
    paths = [getattr(e, "name_or_path", "") or e.config._name_or_path for e in experts]
    licenses = {_license(p) for p in paths}
    return {"experts": [p for p in paths if p] or None,
            "license": licenses.pop() if len(licenses) == 1 else None}


def upcycle(
    experts: Sequence[PreTrainedModel],
    top_k: int = 1,
    temperature: float = 1.0,
    seed: int = 0,
    vocab: str = "align",
    tokenizer: Any = None,
) -> PreTrainedModel:
    """Merge dense experts of one architecture into a DUME mixture-of-experts model.

    Non-MLP weights are averaged (on the vocabulary rows all experts share, see :func:`shared_vocab_rows`);
    layer ``i``'s MLP becomes an :class:`MoEBlock` whose expert ``d`` is a copy of
    ``experts[d].model.layers[i].mlp``; routers get a seeded random init (fit them with
    :func:`dume_exp.fit_routers`). The input models are not modified.
    """
    check_compatible(experts, vocab)
    check_finite_experts(experts)
    native_class(experts[0].config.model_type)
    merged = _dense_merge(experts, skip_mlps=True, vocab=vocab, tokenizer=tokenizer)
    mlps = [[copy.deepcopy(layer.mlp) for layer in decoder_layers(e)] for e in experts]
    layout = _install_moe_blocks(merged, list(zip(*mlps)), top_k, temperature, seed)
    return to_native(merged, layout, _provenance(experts))


def weight_average(experts: Sequence[PreTrainedModel], vocab: str = "align", tokenizer: Any = None) -> PreTrainedModel:
    """Uniform average of every parameter (MLPs included): one dense model of the experts' class."""
    check_compatible(experts, vocab)
    check_finite_experts(experts)
    return _dense_merge(experts, skip_mlps=False, vocab=vocab, tokenizer=tokenizer)


def _legacy_config(path: Path, raw: dict[str, Any]) -> Any:
    """The DUME config of a folder saved before the native classes (stock ``model_type`` + ``dume_moe``)."""
    from transformers import AutoConfig

    stock = AutoConfig.for_model(**{k: v for k, v in raw.items() if k not in (CONFIG_KEY, "architectures")})
    log.warning("%s was saved by an older dume_exp (model_type %r with a 'dume_moe' layout); loading it as %s. "
                "Save it again to get a folder any transformers process can load.", path, raw["model_type"],
                NATIVE_MODELS[raw["model_type"]].__name__)
    return native_config(stock, raw[CONFIG_KEY])


def load_upcycled(path: str | Path, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """Load a DUME model folder (also one saved by an older dume_exp, with a stock ``model_type``).

    Weights are loaded straight into a model built on the meta device (no random model first); every
    parameter must be in the folder.
    """
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"No config.json in {path}; expected a folder written by save_pretrained.")
    raw = json.loads((path / "config.json").read_text())
    model_type = raw.get("model_type")
    if model_type in NATIVE_MODEL_TYPES:
        config = None
    elif raw.get(CONFIG_KEY) and model_type in NATIVE_MODELS:
        config = _legacy_config(path, raw)
    elif raw.get(CONFIG_KEY):
        raise ValueError(f"{path} is a DUME model of model_type {model_type!r}, which has no native class "
                         f"({sorted(NATIVE_MODELS)}).")
    else:
        raise ValueError(f"{path} is not a DUME model (config.json has model_type {model_type!r} and no "
                         f"{CONFIG_KEY!r} layout); load a dense model with AutoModelForCausalLM.from_pretrained.")
    extra = {"config": config} if config is not None else {}
    model, info = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "auto", output_loading_info=True, **extra)
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        raise ValueError(f"{path} does not match its config: {bad}.")
    return model.eval()
