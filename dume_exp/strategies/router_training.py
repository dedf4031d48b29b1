"""Router-only training (BTX-style, and DUME+ after the ridge init): AdamW, warm-up, cosine decay, clipping."""
from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from ..utils.cache import atomic_file, cache_root, quarantine, recipe_key
from ..utils.fingerprints import batches_fingerprint, tensor_fingerprint, tensors_sha256
from ..utils.schema import at_least, checked
from ..utils.schedule import warmup_cosine
from ..method.moe import MoEBlock, require_moe_blocks
from ..method.upcycle import decoder_layers

ROUTER_TRAINING_VERSION = 1


@dataclass
class RouterTrainingConfig:
    """Router training of BTX and DUME+ (the ``router_training`` group of the app's config), with the paper's
    defaults: AdamW lr 1e-4, 1000 steps, 10 warm-up steps, cosine to 0.1·lr, clip 1.0."""

    steps: int = 1000
    lr: float = 1e-4
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    load_balance_alpha: float = 0.0
    train_gate_proj: bool = False  # reproduces the reference code's `"gate" in name` filter
    bf16: Optional[bool] = False  # bf16 autocast of the frozen model's forward; null: where native (resolved by the app)
    batch_size: int = checked(at_least(1), default=8)  # sequences per step (the training batches are built so)
    seq_len: int = checked(at_least(1), default=512)  # tokens per sequence, at most


@dataclass
class TrainingCost:
    steps: int
    tokens: int
    wall_s: float
    final_loss: float


def trainable_router_parameters(model: nn.Module, train_gate_proj: bool = False) -> list[nn.Parameter]:
    """Freeze everything but the routers (and, for the paper-faithful variant, every expert's ``gate_proj``)."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for b in require_moe_blocks(model) for p in b.router.parameters()]
    if train_gate_proj:
        for layer in decoder_layers(model):
            params += [p for e in layer.mlp.experts for p in e.gate_proj.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def lr_factor(step: int, cfg: RouterTrainingConfig) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_lr_ratio`` at ``cfg.steps``."""
    return warmup_cosine(step, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps, min_ratio=cfg.min_lr_ratio)


def load_balance_loss(router_logits: list[torch.Tensor], blocks: list[MoEBlock]) -> torch.Tensor:
    """Switch-Transformer auxiliary loss D·Σ_d f_d·P_d, averaged over layers."""
    losses = []
    for logits, block in zip(router_logits, blocks):
        probs = torch.softmax(logits.float() / block.temperature, dim=-1)
        chosen = torch.nn.functional.one_hot(logits.topk(block.top_k, -1).indices, block.num_experts).sum(1).float()
        losses.append(block.num_experts * (chosen.mean(0) / block.top_k * probs.mean(0)).sum())
    return torch.stack(losses).mean()


def train_routers(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    cfg: RouterTrainingConfig,
    progress: bool = True,
) -> TrainingCost:
    """Train the routers with the language-modelling loss (+ α · load balance) on ``batches`` (cycled)."""
    if cfg.steps < 1:
        raise ValueError(f"router training needs steps ≥ 1; got {cfg.steps}.")
    blocks = require_moe_blocks(model)
    params = trainable_router_parameters(model, cfg.train_gate_proj)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    captured: list[torch.Tensor] = []
    hooks = [b.router.register_forward_hook(lambda m, a, out: captured.append(out)) for b in blocks]
    device = next(model.parameters()).device
    model.train()
    tokens, start, ema = 0, time.perf_counter(), None
    bar = tqdm(itertools.islice(itertools.cycle(batches), cfg.steps), total=cfg.steps, desc="router training",
               disable=not progress)
    try:
        for batch in bar:
            captured.clear()
            ids = batch["input_ids"].to(device)
            mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).to(device)
            labels = ids.masked_fill(mask == 0, -100)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cpu"):
                loss = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
                if cfg.load_balance_alpha > 0:
                    loss = loss + cfg.load_balance_alpha * load_balance_loss(captured, blocks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            n = int(mask.sum())
            tokens += n
            ema = loss.item() if ema is None else 0.9 * ema + 0.1 * loss.item()
            bar.set_postfix(loss=f"{ema:.3f}", tok_s=f"{tokens / (time.perf_counter() - start):.0f}")
    finally:
        for h in hooks:
            h.remove()
        for p in params:
            p.requires_grad_(False)
        model.eval()
    return TrainingCost(cfg.steps, tokens, time.perf_counter() - start, float(ema))


def train_routers_cached(
    model: nn.Module,
    batches: Sequence[Mapping[str, torch.Tensor]],
    cfg: RouterTrainingConfig,
    progress: bool = True,
    root: str | Path | None = None,
) -> tuple[TrainingCost, bool]:
    """:func:`train_routers`, or the trained parameters loaded from ``<cache>/routers`` when this exact
    starting model, data and configuration were trained before (training is deterministic). Returns the
    cost of the original training and whether it came from the cache."""
    from safetensors.torch import save_file

    # batch_size and seq_len shape the batches, which the data fingerprint covers (and keys from before they joined
    # the config stay valid)
    key = recipe_key({"model": tensor_fingerprint(model.state_dict().values()), "data": batches_fingerprint(batches),
                      "config": {k: v for k, v in asdict(cfg).items() if k not in ("batch_size", "seq_len")},
                      "code": ROUTER_TRAINING_VERSION}, length=24)
    path = Path(root) if root is not None else cache_root() / "routers"
    path = path / f"{key}.safetensors"
    params = dict(model.named_parameters())
    stored = _stored_training(path, params)
    if stored is not None:
        state, meta = stored
        with torch.no_grad():
            for name, tensor in state.items():
                params[name].copy_(tensor)
        return TrainingCost(int(meta["steps"]), int(meta["tokens"]), float(meta["wall_s"]), float(meta["final_loss"])), True
    trained = {id(p) for p in trainable_router_parameters(model, cfg.train_gate_proj)}
    cost = train_routers(model, batches, cfg, progress=progress)  # leaves every parameter frozen again
    state = {n: p.detach().contiguous() for n, p in params.items() if id(p) in trained}
    with atomic_file(path) as tmp:
        save_file(state, str(tmp), metadata={**{k: repr(v) for k, v in asdict(cost).items()},
                                             "sha256": tensors_sha256(state)})
    return cost, False


def _stored_training(path: Path, params: Mapping[str, nn.Parameter]) -> tuple[dict, dict] | None:
    """The stored trained parameters and metadata, or ``None`` when absent; an unreadable entry, one whose tensors
    fail their stored sha256 or do not fit the model is moved aside (:func:`~dume_exp.utils.cache.quarantine`)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:  # truncated or garbled: safetensors names the cause
        quarantine(path, f"unreadable ({err})")
        return None
    problem = None
    if "sha256" in meta and meta["sha256"] != tensors_sha256(state):
        problem = "the tensors' sha256 differs from the one stored with them"
    elif any(name not in params or params[name].shape != t.shape for name, t in state.items()):
        problem = "its tensors do not fit this model's parameters"
    if problem:
        quarantine(path, problem)
        return None
    return state, meta
