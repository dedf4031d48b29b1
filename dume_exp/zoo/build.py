"""The embedded expert zoo: base model, domain data and one fine-tuned expert per domain, all cached by recipe."""
from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..utils.cache import cache_root, recipe_key
from ..utils.data_layout import SETTING_DOMAINS, load_split, split_file
from .base_model import DEFAULT_SPEC, base_manifest, prepare_base
from .train import TrainConfig, expert_recipe, train_expert

SETTINGS = tuple(SETTING_DOMAINS)


@dataclass
class Zoo:
    setting: str
    base: Path
    data_dir: Path
    experts: dict[str, Path]
    nltk_data: Path | None
    manifest: dict[str, Any]


def _train_config(cfg: Mapping[str, Any]) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in cfg.items() if k in names})


def _setting_data(setting: str, progress: bool) -> tuple[Path, dict[str, list[str]], dict[str, str], Path | None]:
    """Data folder, training texts per domain, their content hashes, and the NLTK data folder (reasoning)."""
    if setting == "clm":
        from .clm_data import build_clm_data

        data_dir, nltk_data = build_clm_data(progress=progress), None
        entries = json.loads((data_dir / "manifest.json").read_text())["domains"]
        hashes = {d: entries[d]["splits"]["train"]["sha256"] for d in SETTING_DOMAINS[setting]}
    elif setting == "reasoning":
        from .reasoning_data import build_reasoning_data

        data_dir = build_reasoning_data(progress=progress)
        nltk_data = data_dir / "nltk_data"
        entries = json.loads((data_dir / "manifest.json").read_text())["domains"]
        hashes = {d: entries[d]["files"][split_file("train")]["sha256"] for d in SETTING_DOMAINS[setting]}
    else:
        raise ValueError(f"Unknown zoo setting {setting!r}; choose one of {SETTINGS}.")
    return data_dir, {d: load_split(data_dir, d, "train") for d in hashes}, hashes, nltk_data


def ensure_zoo(setting: str, cfg: Mapping[str, Any] | None = None, progress: bool = True) -> Zoo:
    """Build what is missing of the zoo for ``setting`` (``clm`` or ``reasoning``) and return it.

    ``cfg`` holds ``base`` (the embedded GGUF spec, a hub id or a folder) and the expert training
    hyperparameters of :class:`~dume_exp.zoo.train.TrainConfig`; experts are cached under a key
    that hashes the base's weights, the domain's training data and those hyperparameters.
    """
    cfg = dict(cfg or {})
    start = time.perf_counter()
    base = prepare_base(cfg.get("base", DEFAULT_SPEC))
    base_info = base_manifest(base)
    data_dir, texts, hashes, nltk_data = _setting_data(setting, progress)
    train_cfg = _train_config(cfg)
    experts, expert_info = {}, {}
    for domain, domain_texts in texts.items():
        recipe = expert_recipe(base_info, hashes[domain], train_cfg)
        key = recipe_key(recipe)
        out = cache_root() / "models" / "experts" / setting / domain / key
        if not (out / "train_log.json").exists():
            train_expert(base, domain_texts, out, train_cfg)
        experts[domain] = out
        log = json.loads((out / "train_log.json").read_text())
        expert_info[domain] = {"path": str(out), "key": key, "train": log["result"]}
    manifest = {"setting": setting, "base": {"path": str(base), **base_info}, "data_dir": str(data_dir),
                "train_config": asdict(train_cfg), "experts": expert_info,
                "ensure_wall_s": round(time.perf_counter() - start, 1)}
    return Zoo(setting, Path(base), data_dir, experts, nltk_data, manifest)
