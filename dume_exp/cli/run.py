"""The Hydra app (``python -m dume_exp +experiment=reasoning|clm [overrides]``): compose, then run (thin)."""
from __future__ import annotations

import uuid
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ..experiment.config import register_configs

OmegaConf.register_new_resolver("run_id", lambda: uuid.uuid4().hex[:6], use_cache=True, replace=True)
register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from ..experiment.runner import run  # heavy imports after Hydra has validated the config

    run(cfg, Path(HydraConfig.get().runtime.output_dir))

