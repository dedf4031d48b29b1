"""Test helpers: tiny random models of each supported family, experts made from them, random token batches, and a
micro setup (expert folders and data) for running the app end to end."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from dume_exp.evaluation.items import items_score
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

REPO = Path(__file__).resolve().parents[1]

FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
}


def tiny_model(family: str = "llama", seed: int = 0, **overrides) -> torch.nn.Module:
    """A randomly initialised fp32 causal LM with 2 layers and hidden size 32."""
    config_cls, model_cls = FAMILIES[family]
    kwargs = dict(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = model_cls(config_cls(**kwargs))
    return model.float().eval()


def perturbed(model: torch.nn.Module, seed: int, scale: float = 0.05, mlp_only: bool = True) -> torch.nn.Module:
    """A copy of ``model`` with Gaussian noise added to its MLPs (or to every parameter)."""
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in out.named_parameters():
            if mlp_only and ".mlp." not in name:
                continue
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return out


def make_experts(n: int, family: str = "llama", shared_backbone: bool = True, seed: int = 0, **overrides) -> list:
    base = tiny_model(family, seed=seed, **overrides)
    return [perturbed(base, seed=seed + 100 + d, mlp_only=shared_backbone) for d in range(n)]


def random_batches(n_batches: int, batch_size: int, seq_len: int, vocab: int = 300, seed: int = 0, low: int = 3):
    gen = torch.Generator().manual_seed(seed)
    return [
        {"input_ids": torch.randint(low, vocab, (batch_size, seq_len), generator=gen),
         "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long)}
        for _ in range(n_batches)
    ]


TEXTS = {"prose": ["The quick brown fox jumps over the lazy dog number %d." % i for i in range(12)],
         "code": ["def f%d(x):\n    return x + %d\n" % (i, i) for i in range(12)]}


def write_micro_setup(root: Path, experts, base, tokenizer) -> None:
    """Expert folders (with the tokenizer), the base model and train/test JSONL of each domain of TEXTS under root."""
    for domain, model in zip(TEXTS, experts):
        model.save_pretrained(root / "experts" / domain)
        tokenizer.save_pretrained(root / "experts" / domain)
        (root / "data" / domain).mkdir(parents=True)
        for split, rows in (("train", TEXTS[domain][:8]), ("test", TEXTS[domain][8:])):
            (root / "data" / domain / f"{split}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    base.save_pretrained(root / "base")


def micro_overrides(root: Path) -> list[str]:
    """The app's overrides for the CLM experiment on the micro setup under ``root`` (sizes cut to seconds)."""
    return ["+experiment=clm", "experts.source=pretrained", "experts.domains=[prose,code]",
            f"+experts.models.prose={root}/experts/prose", f"+experts.models.code={root}/experts/code",
            f"experts.data_dir={root}/data", f"experts.base={root}/base", "eval.batch_size=4", "progress=false",
            "router_training.steps=2", "router_training.seq_len=32", "router_training.batch_size=4",
            "router.max_tokens_per_sequence=32", "seeds=null",  # one seed (the experiments run three)
            f"results_dir={root}/results"]


def run_app(root: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``python -m dume_exp +experiment=clm`` on the micro setup under ``root`` (its own caches), in a subprocess."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(root / "hf"),
           "WANDB_MODE": "offline", "DUME_CACHE": str(root / "cache")}
    cmd = [sys.executable, "-m", "dume_exp", *micro_overrides(root), f"hydra.run.dir={root}/run", *overrides]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def run_micro(root: Path, name: str, *overrides: str) -> dict:
    """The app's run on the micro setup under ``root`` in this process (run folder ``root/name``; the caller points
    ``DUME_CACHE`` at its cache), for tests that replace a piece of it (monkeypatch) or read its errors."""
    from dume_exp.experiment.runner import run

    (root / name).mkdir()
    return run(compose_app(*micro_overrides(root), "logger=none", *overrides), root / name)


def compose_app(*overrides: str, hydra: bool = False):
    """The app's config composed from ``overrides`` (with the ``hydra`` node when ``hydra``), as the CLI would."""
    from hydra import compose, initialize_config_dir

    from dume_exp.experiment.config import CONF_DIR, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", list(overrides), return_hydra_config=hydra)


def run_torchrun(job: Path, *args: str, cwd: Path, processes: int = 2) -> subprocess.CompletedProcess:
    """``job`` (a script under tests/) in ``processes`` single-threaded torchrun processes on this machine."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
           str(job), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def item_outcomes(num, den=None, kind: str = "mean") -> dict:
    """One task's per-item outcomes (``num``/``den`` per document) as the evaluation stores them."""
    num = [float(v) for v in num]
    return {"aggregate": kind, "doc_id": list(range(len(num))), "num": num,
            "den": [1.0] * len(num) if den is None else [float(v) for v in den]}


def make_results(domains: dict[str, bool], rows: dict[str, list[dict[str, dict]]]) -> dict:
    """``rows[name][seed][domain]`` = that domain's ``{task: items}``; scores are computed from the items."""
    n_seeds = len(next(iter(rows.values())))
    seeds = []
    for s in range(n_seeds):
        out = []
        for name, per_seed in rows.items():
            items = per_seed[s]
            scores = {d: float(np.mean([items_score(t) for t in items[d].values()])) for d in domains}
            out.append({"name": name, "strategy": name.split(":")[0].split("@")[0], "scores": scores, "items": items,
                        "cost": {"wall_s": 0.0, "forward_tokens": 0, "backward_tokens": 0}})
        seeds.append({"seed": s, "rows": out})
    return {"experiment": "synthetic", "title": "Synthetic", "domains": list(domains),
            "metrics": {d: {"higher_is_better": hib, "label": d} for d, hib in domains.items()},
            "seeds": seeds, "seed_list": list(range(n_seeds))}
