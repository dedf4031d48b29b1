"""Fine-tune a causal LM on one domain's texts: the zoo's dense experts.

Every source of randomness (data order, any dropout) comes from ``TrainConfig.seed``, so one seed gives
bit-identical weights for a fixed thread count. The result is written atomically as a transformers
folder (``model.safetensors`` + tokenizer + ``train_log.json``).
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..utils.cache import atomic_dir, write_json_atomic
from ..utils.hardware import native_bf16, pick_device
from ..utils.schedule import warmup_cosine

log = logging.getLogger(__name__)

TRAIN_CODE_VERSION = 1
ADAM_BETAS = (0.9, 0.95)
LOSS_WINDOW = 10  # steps in the moving average reported as the final loss
TRAINABLE = ("all", "mlp")
TOKEN_BREAK = "\x1e"  # in a training text: tokenise the two sides apart (see pack_blocks)


@dataclass
class TrainConfig:
    """Hyperparameters of one expert fine-tune.

    The defaults (82k tokens) take about 3.5 min for SmolLM2-135M on 2 idle cores with native bf16.
    """

    trainable: str = "all"  # "all" parameters, or only "mlp" (model.model.layers[i].mlp)
    steps: int = 40
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 2e-4
    weight_decay: float = 0.0  # applied to matrices only, never to norms or biases
    warmup_steps: int = 4
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    seed: int = 0
    bf16: bool = True  # bf16 autocast, used only where the CPU has native bf16 (else fp32)
    threads: int = 0  # torch threads while training; 0 keeps torch's current setting
    device: str = "auto"  # "auto" (CUDA, else MPS, else the CPU), "cpu", "cuda", "cuda:1", ... (utils.hardware)

    def __post_init__(self) -> None:
        if self.trainable not in TRAINABLE:
            raise ValueError(f"trainable={self.trainable!r}; choose one of {TRAINABLE}.")
        for name in ("steps", "batch_size", "seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be in [0, steps={self.steps}).")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio={self.min_lr_ratio} must be in [0, 1].")
        if self.lr <= 0 or self.weight_decay < 0 or self.grad_clip < 0 or self.threads < 0:
            raise ValueError("lr must be > 0; weight_decay, grad_clip and threads must be >= 0.")


@dataclass
class TrainResult:
    """What one fine-tune did; ``tokens_per_second`` counts only the optimisation loop."""

    out_dir: Path
    steps: int
    tokens: int
    seconds: float
    tokens_per_second: float
    initial_loss: float  # mean over the first LOSS_WINDOW steps
    final_loss: float  # mean over the last LOSS_WINDOW steps
    trainable_params: int
    precision: str
    losses: list[float] = field(repr=False)


def expert_recipe(base_manifest: dict[str, Any], data_hash: str, cfg: TrainConfig) -> dict[str, Any]:
    """Everything that determines an expert's weights, for ``cache.recipe_key``.

    The base enters by its weights hash only (not its path); ``threads`` and ``device`` are left out, since
    they only change float summation order, not what is trained. ``bf16`` enters as the precision training will
    actually use (fp32 where the device has no native bf16), so experts trained in fp32 get their own key.
    """
    if "model_sha256" not in base_manifest:
        raise KeyError("base_manifest has no 'model_sha256'; build it with dume_exp.zoo.base_model.base_manifest().")
    train = {k: v for k, v in asdict(cfg).items() if k not in ("threads", "device")}
    train["bf16"] = bool(cfg.bf16) and native_bf16(pick_device(cfg.device))
    return {
        "base_sha256": base_manifest["model_sha256"],
        "data": data_hash, "train": train, "code": TRAIN_CODE_VERSION,
    }


def pack_blocks(tokenizer, texts: Sequence[str], seq_len: int) -> torch.Tensor:
    """Token blocks [n, seq_len]: every non-empty text tokenised, EOS appended, concatenated, tail dropped.

    A text is tokenised in pieces at each :data:`TOKEN_BREAK`, the way a prompt and the model's answer are
    tokenised apart at inference (a BPE merge across that boundary would teach tokens never seen there).
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("The tokenizer has no eos_token; set one so documents can be separated.")
    docs = [t.split(TOKEN_BREAK) for t in texts if t]
    pieces = [piece for doc in docs for piece in doc]
    encoded = iter(tokenizer(pieces, add_special_tokens=False)["input_ids"] if pieces else [])
    ids: list[int] = []
    for doc in docs:
        for _ in doc:
            ids.extend(next(encoded))
        ids.append(eos)
    n = len(ids) // seq_len
    if n == 0:
        raise ValueError(f"The training texts give {len(ids)} tokens, fewer than one block of seq_len={seq_len}.")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def batch_indices(n_blocks: int, steps: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Block indices for each step: seeded permutations of all blocks, one epoch after another."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        while len(order) < batch_size:
            order = torch.cat([order, torch.randperm(n_blocks, generator=gen)])
        yield order[:batch_size]
        order = order[batch_size:]


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to 1, then cosine decay reaching ``min_lr_ratio`` at the last step (``cfg.steps - 1``)."""
    return warmup_cosine(step, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps - 1, min_ratio=cfg.min_lr_ratio)


def select_trainable(model: torch.nn.Module, trainable: str) -> list[tuple[str, torch.nn.Parameter]]:
    """Set ``requires_grad`` for ``trainable`` ("all" or "mlp") and return the trainable named parameters."""
    if trainable == "mlp":
        layers = getattr(getattr(model, "model", None), "layers", None)
        if layers is None:
            raise ValueError(f"trainable='mlp' needs a model.model.layers[i].mlp layout; {type(model).__name__} has none.")
        model.requires_grad_(False)
        for layer in layers:
            layer.mlp.requires_grad_(True)
    else:
        model.requires_grad_(True)
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


@contextlib.contextmanager
def _num_threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _optimizer(named: list[tuple[str, torch.nn.Parameter]], cfg: TrainConfig) -> torch.optim.AdamW:
    decay = [p for _, p in named if p.ndim >= 2]
    no_decay = [p for _, p in named if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=ADAM_BETAS)


def train_expert(base: str | Path, texts: Sequence[str], out_dir: Path, cfg: TrainConfig) -> TrainResult:
    """Fine-tune the causal LM at ``base`` on ``texts`` (next-token loss) and save it atomically to ``out_dir``."""
    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(base)
    blocks = pack_blocks(tokenizer, texts, cfg.seq_len)
    device = pick_device(cfg.device)
    precision = "bf16" if cfg.bf16 and native_bf16(device) else "fp32"
    if cfg.bf16 and precision == "fp32":
        log.warning("This %s has no native bf16; training in fp32 instead.", device.type.upper())
    with torch.random.fork_rng(devices=[]), _num_threads(cfg.threads):
        torch.manual_seed(cfg.seed)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to(device)
        named = select_trainable(model, cfg.trainable)
        params = [p for _, p in named]
        optimizer = _optimizer(named, cfg)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
        model.train()
        losses: list[float] = []
        tokens_per_step = cfg.batch_size * cfg.seq_len
        bar = tqdm(batch_indices(len(blocks), cfg.steps, cfg.batch_size, cfg.seed), total=cfg.steps,
                   desc=f"train {out_dir.name}", unit="step")
        start = time.perf_counter()
        for step, idx in enumerate(bar, 1):
            batch = blocks[idx].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = model(input_ids=batch, labels=batch, use_cache=False).loss
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{_mean_tail(losses):.3f}",
                            tok_s=f"{step * tokens_per_step / (time.perf_counter() - start):.0f}")
        seconds = time.perf_counter() - start
        bar.close()
    model.eval().cpu()
    result = TrainResult(
        out_dir=out_dir, steps=cfg.steps, tokens=cfg.steps * tokens_per_step, seconds=round(seconds, 2),
        tokens_per_second=round(cfg.steps * tokens_per_step / seconds, 1),
        initial_loss=sum(losses[:LOSS_WINDOW]) / len(losses[:LOSS_WINDOW]), final_loss=_mean_tail(losses),
        trainable_params=sum(p.numel() for p in params), precision=precision, losses=losses,
    )
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / "train_log.json", {
            "config": asdict(cfg), "result": asdict(result), "blocks": len(blocks), "code": TRAIN_CODE_VERSION,
        })
    return result


def _mean_tail(values: list[float]) -> float:
    tail = values[-LOSS_WINDOW:]
    return sum(tail) / len(tail)
