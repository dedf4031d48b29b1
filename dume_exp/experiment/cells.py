"""Results cells: where the results of one exact configuration are kept (what makes sweeps resumable)."""
from __future__ import annotations

import functools
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..utils.cache import recipe_key
from .config import RENAMED_GROUPS, VllmConfig, resolve_auto_precision


# Config entries that do not change a run's numbers (left out of its cell key).
PRESENTATION_KEYS = ("results_dir", "progress", "logger", "title", "resume", "write_table", "save_models")


# Fields added after results cells were committed, with their defaults: left out of the cell key while they hold
# these values, so every configuration from before them keeps its key (and its committed cell).
KEY_NEUTRAL_DEFAULTS = {"calibration.text": "prompt_answer", "calibration.mask_padding": True, "experts.vocab": "align",
                        "router.bias": True, "eval.unsafe_code": False, "eval.backend": "inmemory",
                        "eval.processes": 1, "eval.seed": 0, "router_training.checkpoints": [],
                        "eval.vllm": asdict(VllmConfig()), "device": "cpu",
                        "calibration.collect_only": []}


def code_versions() -> dict[str, int]:
    """Versions of the code whose changes alter results without a config change (expert data and training,
    statistics collection, router training)."""
    from ..strategies.router_training import ROUTER_TRAINING_VERSION
    from ..method.statistics_store import COLLECTOR_VERSION
    from ..zoo.clm_data import CLM_DATA_VERSION
    from ..zoo.reasoning_data import REASONING_DATA_VERSION
    from ..zoo.train import TRAIN_CODE_VERSION

    return {"router_training": ROUTER_TRAINING_VERSION, "collector": COLLECTOR_VERSION, "clm_data": CLM_DATA_VERSION,
            "reasoning_data": REASONING_DATA_VERSION, "expert_training": TRAIN_CODE_VERSION}


def setting_versions(cfg: DictConfig) -> dict[str, int]:
    """Versions of changes that alter results only under some settings, keyed only where those apply (so every
    other configuration keeps its cell): bf16 router training of BTX / DUME+."""
    from ..strategies.router_training import BF16_TRAINING_VERSION

    trains = any(cfg.strategy.get(name) for name in ("btx", "dume_plus"))
    return {"router_training_bf16": BF16_TRAINING_VERSION} if trains and cfg.router_training.bf16 else {}


def drop_neutral_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (a resolved config container, changed in place) without the :data:`KEY_NEUTRAL_DEFAULTS` entries
    that hold their default."""
    for dotted, default in KEY_NEUTRAL_DEFAULTS.items():
        *parents, leaf = dotted.split(".")
        node = functools.reduce(lambda d, k: d.get(k, {}), parents, config)
        if leaf in node and node[leaf] == default:
            del node[leaf]
    return config


# Renamed config groups keep their old names in the cell key, so every cell from before a rename keeps its key.
KEY_GROUP_NAMES = {new: old for old, new in RENAMED_GROUPS.items()}


def cell_path(cfg: DictConfig) -> Path:
    """Where the results of this exact configuration are kept, keyed by the hash of what determines them
    (the configuration without its presentation keys and key-neutral defaults, renamed groups under their
    :data:`KEY_GROUP_NAMES`, :func:`code_versions` and :func:`setting_versions`)."""
    cfg = cfg.copy()
    resolve_auto_precision(cfg)  # a null bf16 switch keys as the precision this machine uses
    resolved = drop_neutral_defaults(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    config = {KEY_GROUP_NAMES.get(k, k): v for k, v in resolved.items() if k not in PRESENTATION_KEYS}
    key = recipe_key({"config": config, "code": {**code_versions(), **setting_versions(cfg)}}, length=20)
    return Path(cfg.results_dir) / cfg.experiment / "cells" / f"{key}.json"

