"""Router-only training (BTX-style, and DUME+ after the ridge init): AdamW, warm-up, cosine decay, clipping."""
from __future__ import annotations

import contextlib
import copy
import itertools
import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

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
# 2: bf16 training runs a bf16 copy of the frozen model, the trained parameters fp32 (1: the fp32 model under bf16
# autocast). Keyed only where bf16 training is on (router cache and results cells), so every other key stands.
BF16_TRAINING_VERSION = 2


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
    # on CPU, train on a bf16 copy of the frozen model (the trained parameters stay fp32); null: where native
    # (resolved by the app)
    bf16: Optional[bool] = False
    batch_size: int = checked(at_least(1), default=8)  # sequences per step (the training batches are built so)
    seq_len: int = checked(at_least(1), default=512)  # tokens per sequence, at most
    # snapshot the trained parameters after each of these steps (0: the initial routers) of the one run on the
    # schedule of `steps`; BTX and DUME+ then score one model per snapshot, `<name>@<step>`
    checkpoints: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        problem = checkpoints_problem(list(self.checkpoints), self.steps)
        if problem:
            raise ValueError(f"router_training.checkpoints={list(self.checkpoints)}: {problem}; list steps between 0 "
                             f"and router_training.steps={self.steps} in increasing order without repeats "
                             f"(e.g. [0, {self.steps // 2}, {self.steps}]), or [] for none.")
        self.checkpoints = [int(c) for c in self.checkpoints]


def checkpoints_problem(checkpoints: list[Any], steps: int) -> str | None:
    """What is wrong with ``checkpoints`` for a run of ``steps`` steps, or ``None``."""
    for i, c in enumerate(checkpoints):
        if isinstance(c, bool) or not isinstance(c, int):
            return f"{c!r} is not a whole number of steps"
        if not 0 <= c <= steps:
            return f"{c} is outside [0, steps={steps}]"
        if i and c <= checkpoints[i - 1]:
            return f"{c} does not come after {checkpoints[i - 1]}"
    return None


def training_record(cfg: RouterTrainingConfig) -> dict[str, Any]:
    """``cfg`` as results and cache keys record it: without ``checkpoints`` while there are none (as before the
    knob existed)."""
    record = asdict(cfg)
    if not record["checkpoints"]:
        del record["checkpoints"]
    return record


@dataclass(eq=False)
class RouterCheckpoint:
    """The trained parameters (by name) after ``step`` steps, and the tokens and wall time spent up to then."""

    step: int
    tokens: int
    wall_s: float
    state: dict[str, torch.Tensor]


@dataclass
class TrainingCost:
    """What a training cost and ended at; ``checkpoints``: the snapshots of ``RouterTrainingConfig.checkpoints``."""

    steps: int
    tokens: int
    wall_s: float
    final_loss: float
    checkpoints: list[RouterCheckpoint] = field(default_factory=list, compare=False, repr=False)

    def metadata(self) -> dict[str, str]:
        """The scalars as stored with the trained parameters (``repr`` of each)."""
        return {k: repr(getattr(self, k)) for k in ("steps", "tokens", "wall_s", "final_loss")}


@dataclass
class TrainingStep:
    """Where a training stands after ``step`` optimiser steps (wall time of the training's own work)."""

    step: int
    tokens: int
    wall_s: float
    loss: float


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


def bf16_training_copy(model: nn.Module, trained: Sequence[nn.Parameter]) -> nn.Module:
    """A copy of ``model`` whose frozen parameters are bf16 (new tensors: ``model`` is untouched) and whose
    ``trained`` parameters are ``model``'s own fp32 ones, shared: training the copy trains ``model``. A module holding
    such a parameter computes in fp32 on its input cast up; its output goes on in bf16, except a router's logits,
    which the MoE block takes in fp32."""
    kept = {id(p) for p in trained}
    memo: dict[int, Any] = {id(p): p if id(p) in kept else nn.Parameter(p.detach().to(torch.bfloat16), False)
                            for p in model.parameters()}
    work = copy.deepcopy(model, memo)
    routers = {id(b.router) for b in require_moe_blocks(work)}
    for module in work.modules():
        if any(id(p) in kept for p in module.parameters(recurse=False)):
            module.register_forward_pre_hook(lambda m, args: (args[0].float(), *args[1:]))
            if id(module) not in routers:
                module.register_forward_hook(lambda m, args, out: out.to(torch.bfloat16))
    return work


def router_training_steps(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    cfg: RouterTrainingConfig,
) -> Iterator[TrainingStep]:
    """The training loop one optimiser step at a time, on the schedule of ``cfg.steps``: language-modelling loss
    (+ α · load balance) on ``batches`` (cycled). Stopping early (closing the generator) leaves the routers as
    trained so far; either way every parameter ends frozen and ``model`` in eval mode."""
    if cfg.steps < 1:
        raise ValueError(f"router training needs steps ≥ 1; got {cfg.steps}.")
    start = time.perf_counter()
    params = trainable_router_parameters(model, cfg.train_gate_proj)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    device = next(model.parameters()).device
    work = bf16_training_copy(model, params) if cfg.bf16 and device.type == "cpu" else model
    blocks = require_moe_blocks(work)
    captured: list[torch.Tensor] = []
    hooks = [b.router.register_forward_hook(lambda m, a, out: captured.append(out)) for b in blocks]
    work.train()
    tokens, wall = 0, time.perf_counter() - start
    try:
        for step, batch in enumerate(itertools.islice(itertools.cycle(batches), cfg.steps), start=1):
            begin = time.perf_counter()
            captured.clear()
            ids = batch["input_ids"].to(device)
            mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).to(device)
            labels = ids.masked_fill(mask == 0, -100)
            loss = work(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
            if cfg.load_balance_alpha > 0:
                loss = loss + cfg.load_balance_alpha * load_balance_loss(captured, blocks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            tokens += int(mask.sum())
            wall += time.perf_counter() - begin
            yield TrainingStep(step, tokens, wall, loss.item())
    finally:
        for h in hooks:
            h.remove()
        for p in params:
            p.requires_grad_(False)
        model.eval()


def train_routers(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    cfg: RouterTrainingConfig,
    progress: bool = True,
) -> TrainingCost:
    """Train the routers of ``model`` in place (:func:`router_training_steps`), snapshotting the trained parameters
    at ``cfg.checkpoints``."""
    names = {id(p): n for n, p in model.named_parameters()}
    trained = [names[id(p)] for p in trainable_router_parameters(model, cfg.train_gate_proj)]
    params = dict(model.named_parameters())
    wanted = set(cfg.checkpoints)

    def snapshot(step: int, tokens: int, wall_s: float) -> RouterCheckpoint:
        return RouterCheckpoint(step, tokens, wall_s, {n: params[n].detach().clone() for n in trained})

    checkpoints = [snapshot(0, 0, 0.0)] if 0 in wanted else []
    ema = None
    with contextlib.closing(router_training_steps(model, batches, cfg)) as steps:
        bar = tqdm(steps, total=cfg.steps, desc="router training", disable=not progress)
        for at in bar:
            ema = at.loss if ema is None else 0.9 * ema + 0.1 * at.loss
            bar.set_postfix(loss=f"{ema:.3f}", tok_s=f"{at.tokens / max(at.wall_s, 1e-9):.0f}")
            if at.step in wanted:
                checkpoints.append(snapshot(at.step, at.tokens, at.wall_s))
    return TrainingCost(cfg.steps, at.tokens, at.wall_s, float(ema), checkpoints)


def train_routers_cached(
    model: nn.Module,
    batches: Sequence[Mapping[str, torch.Tensor]],
    cfg: RouterTrainingConfig,
    progress: bool = True,
    root: str | Path | None = None,
) -> tuple[TrainingCost, bool]:
    """:func:`train_routers`, or the trained parameters (and the checkpoints' snapshots) loaded from
    ``<cache>/routers`` when this exact starting model, data and configuration were trained before (training is
    deterministic). Returns the cost of the original training and whether it came from the cache."""
    from safetensors.torch import save_file

    # batch_size and seq_len shape the batches, which the data fingerprint covers (and keys from before they joined
    # the config stay valid); so do those from before checkpoints, which are keyed only when there are some
    config = {k: v for k, v in training_record(cfg).items() if k not in ("batch_size", "seq_len")}
    recipe = {"model": tensor_fingerprint(model.state_dict().values()), "data": batches_fingerprint(batches),
              "config": config, "code": ROUTER_TRAINING_VERSION}
    if cfg.bf16:
        recipe["bf16_code"] = BF16_TRAINING_VERSION
    key = recipe_key(recipe, length=24)
    path = Path(root) if root is not None else cache_root() / "routers"
    path = path / f"{key}.safetensors"
    params = dict(model.named_parameters())
    stored = _stored_training(path, params, cfg.checkpoints)
    if stored is not None:
        state, cost = stored
        with torch.no_grad():
            for name, tensor in state.items():
                params[name].copy_(tensor)
        return cost, True
    trained = {id(p) for p in trainable_router_parameters(model, cfg.train_gate_proj)}
    cost = train_routers(model, batches, cfg, progress=progress)  # leaves every parameter frozen again
    state = {n: p.detach().contiguous() for n, p in params.items() if id(p) in trained}
    meta = cost.metadata()
    for ck in cost.checkpoints:
        state.update({f"{CHECKPOINT_PREFIX}{ck.step}/{n}": t for n, t in ck.state.items()})
    if cost.checkpoints:
        meta["checkpoints"] = json.dumps([{"step": c.step, "tokens": c.tokens, "wall_s": c.wall_s}
                                          for c in cost.checkpoints])
    with atomic_file(path) as tmp:
        save_file(state, str(tmp), metadata={**meta, "sha256": tensors_sha256(state)})
    return cost, False


CHECKPOINT_PREFIX = "checkpoint@"  # stored snapshot tensors: checkpoint@<step>/<parameter name>


def _stored_training(path: Path, params: Mapping[str, nn.Parameter],
                     checkpoints: Sequence[int]) -> tuple[dict[str, torch.Tensor], TrainingCost] | None:
    """The stored trained parameters and the training's cost (with the snapshots of ``checkpoints``), or ``None``
    when absent; an unreadable entry, one whose tensors fail their stored sha256, do not fit the model or lack a
    checkpoint is moved aside (:func:`~dume_exp.utils.cache.quarantine`)."""
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
    intact = "sha256" not in meta or meta["sha256"] == tensors_sha256(state)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    for name in [n for n in state if n.startswith(CHECKPOINT_PREFIX)]:
        step, _, param = name[len(CHECKPOINT_PREFIX):].partition("/")
        snapshots.setdefault(int(step), {})[param] = state.pop(name)
    recorded = json.loads(meta.get("checkpoints", "[]"))
    problem = None
    if not intact:
        problem = "the tensors' sha256 differs from the one stored with them"
    elif any(name not in params or params[name].shape != t.shape for name, t in state.items()):
        problem = "its tensors do not fit this model's parameters"
    elif ([c["step"] for c in recorded] != list(checkpoints) or sorted(snapshots) != list(checkpoints)
          or any(snap.keys() != state.keys() for snap in snapshots.values())):
        problem = f"its snapshots are not those of checkpoints {list(checkpoints)}"
    if problem:
        quarantine(path, problem)
        return None
    cost = TrainingCost(int(meta["steps"]), int(meta["tokens"]), float(meta["wall_s"]), float(meta["final_loss"]),
                        [RouterCheckpoint(c["step"], c["tokens"], c["wall_s"], snapshots[c["step"]]) for c in recorded])
    return state, cost
