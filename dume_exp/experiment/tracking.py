"""Experiment tracking: wandb (offline unless the user chose a mode) or nothing, behind one small interface."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol


_WANDB_DIR_VARS = ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR")
_USER_SET = {v for v in _WANDB_DIR_VARS if v in os.environ}  # the user's own choices win


class Tracker(Protocol):
    def log(self, metrics: Mapping[str, Any]) -> None: ...
    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None: ...
    def log_image(self, key: str, path: str | Path) -> None: ...
    def summary(self, values: Mapping[str, Any]) -> None: ...


class NullTracker:
    """``logger=none``: records nothing."""

    def log(self, metrics: Mapping[str, Any]) -> None:
        pass

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        pass

    def log_image(self, key: str, path: str | Path) -> None:
        pass

    def summary(self, values: Mapping[str, Any]) -> None:
        pass


class WandbTracker:
    """A wandb run whose files all stay inside the run folder."""

    def __init__(self, run: Any) -> None:
        self.run = run

    def log(self, metrics: Mapping[str, Any]) -> None:
        self.run.log(dict(metrics))

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        import wandb

        self.run.log({key: wandb.Table(columns=columns, data=rows)})

    def log_image(self, key: str, path: str | Path) -> None:
        import wandb

        self.run.log({key: wandb.Image(str(path))})

    def summary(self, values: Mapping[str, Any]) -> None:
        self.run.summary.update(dict(values))


@contextlib.contextmanager
def tracker(kind: str, run_dir: Path, config: Mapping[str, Any], project: str, name: str,
            group: str | None = None, tags: list[str] | None = None) -> Iterator[Tracker]:
    """Open a tracker; the wandb run is always finished, with exit code 1 if the body raised."""
    if kind == "none":
        yield NullTracker()
        return
    if kind != "wandb":
        raise ValueError(f"logger must be 'wandb' or 'none'; got {kind!r}.")
    os.environ.setdefault("WANDB_MODE", "offline")
    wandb_dir = Path(run_dir) / "wandb"
    wandb_dir.mkdir(parents=True, exist_ok=True)
    for var in set(_WANDB_DIR_VARS) - _USER_SET:
        os.environ[var] = str(wandb_dir)
    import wandb

    run = wandb.init(project=project, name=name, group=group, tags=tags, dir=str(wandb_dir),
                     config=dict(config), reinit="finish_previous")
    failed = True
    try:
        yield WandbTracker(run)
        failed = False
    finally:
        run.finish(exit_code=1 if failed else 0)
