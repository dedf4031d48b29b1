"""The Hydra app (``python -m dume_exp +experiment=reasoning|clm [overrides]``): compose, then run (thin)."""
from __future__ import annotations

import sys
import uuid
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ..experiment.config import RENAMED_GROUPS, register_configs

OmegaConf.register_new_resolver("run_id", lambda: uuid.uuid4().hex[:6], use_cache=True, replace=True)
register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def app(cfg: DictConfig) -> None:
    from ..experiment.runner import run  # heavy imports after Hydra has validated the config

    run(cfg, Path(HydraConfig.get().runtime.output_dir))


def refuse_renamed_groups(overrides: list[str]) -> None:
    """Stop on an override of a renamed config group, naming its new name (Hydra would only call the key unknown)."""
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        group, _, rest = key.partition(".")
        if group in RENAMED_GROUPS:
            new = RENAMED_GROUPS[group]
            raise SystemExit(f"The config group '{group}' is now '{new}': write {new}{'.' + rest if rest else ''}=... "
                             f"instead of {override}.")


def main() -> None:
    refuse_renamed_groups(sys.argv[1:])
    app()
