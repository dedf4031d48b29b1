"""Every shipped experiment composes and passes the app's validation, alone and under every sweep, for each value
each sweep runs: the values of ``hydra.sweeper.params`` in the sweep's YAML and the expert subsets that
``python -m dume_exp.sweeps experts --dry-run`` puts on the command line. Nothing is hard-coded: experiments,
sweeps and values are read from the files and the CLI, so a new file or value is covered as it lands.

Each case composes through Hydra's compose API as the app does (``register_configs()`` + the package's config
tree), resolves every interpolation, checks that the swept key holds the swept value, and runs
:func:`dume_exp.experiment.validate.validate`.
"""
from __future__ import annotations

import contextlib
import io
import shlex
from enum import Enum
from functools import lru_cache
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, ListConfig, OmegaConf

from dume_exp.cli import sweeps as sweeps_cli
from dume_exp.evaluation.tasks.sandbox import isolation_problem
from dume_exp.experiment.config import CONF_DIR, register_configs
from dume_exp.experiment.validate import scores_generated_code, validate

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
SWEEPS = sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml"))
PARSER = OverridesParser.create()


def swept(assignment: str) -> list[tuple[str, Any]]:
    """``key=value`` → [(key, value)] for each value it runs (one for a plain value, each of ``a,b``,
    ``choice(...)``, ``range(...)``...); values as Hydra parses them."""
    override = PARSER.parse_override(assignment)
    key = override.get_key_element()
    if override.is_sweep_override():
        return [(key, value) for value in override.sweep_iterator()]
    return [(key, override.value())]


def sweeper_params(sweep: str) -> dict[str, str]:
    """``hydra.sweeper.params`` of a sweep's YAML: swept key → its value string."""
    raw = yaml.safe_load((CONF_DIR / "sweep" / f"{sweep}.yaml").read_text(encoding="utf-8")) or {}
    params = ((raw.get("hydra") or {}).get("sweeper") or {}).get("params") or {}
    return {str(k): str(v) for k, v in params.items()}


def launcher_overrides(sweep: str, experiment: str) -> list[str] | None:
    """The overrides that ``python -m dume_exp.sweeps <sweep> --experiment <experiment> --dry-run`` prints after
    ``-m dume_exp``, or ``None`` when that CLI has no such sweep or experiment."""
    if sweep not in LAUNCHED or experiment not in LAUNCHED[sweep]:
        return None
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        sweeps_cli.main([sweep, "--experiment", experiment, "--dry-run"])
    argv = shlex.split(out.getvalue())
    return argv[argv.index("-m") + 2:]


# the sweeps whose values the sweeps CLI computes: sweep name → the experiments its --experiment accepts
LAUNCHED = {"experts": sorted(sweeps_cli.EXPERT_SETS)}


@lru_cache(maxsize=None)
def cases() -> list[tuple[str, tuple[str, ...], tuple[str, Any] | None]]:
    """(id, overrides, (swept key, value) or None) for every experiment × (no sweep | each sweep's each value)."""
    out = []
    for experiment in EXPERIMENTS:
        base = (f"+experiment={experiment}",)
        out.append((f"{experiment}", base, None))
        for sweep in SWEEPS:
            with_sweep = (*base, f"+sweep={sweep}")
            out.append((f"{experiment}+{sweep}", with_sweep, None))
            for key, text in sweeper_params(sweep).items():
                for k, value in swept(f"{key}={text}"):
                    out.append((f"{experiment}+{sweep}:{k}={value}", (*with_sweep, f"{k}={value}"), (k, value)))
            launched = launcher_overrides(sweep, experiment) or []
            fixed = [o for o in launched if o not in with_sweep and not PARSER.parse_override(o).is_sweep_override()]
            for assignment in (o for o in launched if PARSER.parse_override(o).is_sweep_override()):
                for k, value in swept(assignment):
                    text = _override_text(value)
                    out.append((f"{experiment}+{sweep}:{k}={text}", (*with_sweep, *fixed, f"{k}={text}"), (k, value)))
    return out


def _override_text(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(_override_text(v) for v in value) + "]"
    return str(value)


def holds(composed: Any, swept_value: Any) -> bool:
    """Whether a composed value is the swept value as Hydra's parser gives it (containers as lists and dicts;
    an Enum member matches its name or its value)."""
    if isinstance(composed, (DictConfig, ListConfig)):
        composed = OmegaConf.to_container(composed, resolve=True)
    if isinstance(composed, Enum):
        return swept_value in (composed.name, composed.value) or composed == swept_value
    if isinstance(composed, list) and isinstance(swept_value, list):
        return len(composed) == len(swept_value) and all(map(holds, composed, swept_value))
    if isinstance(composed, dict) and isinstance(swept_value, dict):
        return composed.keys() == swept_value.keys() and all(holds(composed[k], swept_value[k]) for k in composed)
    return composed == swept_value


def test_every_experiment_sweep_and_swept_value_is_enumerated():
    assert EXPERIMENTS and SWEEPS
    ids = [case[0] for case in cases()]
    assert len(ids) == len(set(ids))
    for sweep in SWEEPS:
        for key, text in sweeper_params(sweep).items():
            assert len(swept(f"{key}={text}")) >= 1
    for sweep, experiments in LAUNCHED.items():
        for experiment in experiments:  # the CLI's values reached the cases
            assert any(i.startswith(f"{experiment}+{sweep}:") and key is not None and key[0] not in
                       sweeper_params(sweep) for i, _, key in cases())


@pytest.fixture(scope="module")
def isolation_missing():
    """Why this machine cannot isolate generated code (``None`` when it can): a fresh machine without bubblewrap
    makes validation refuse the runs that score code, by design, unless ``eval.unsafe_code=true``."""
    return isolation_problem()


@pytest.mark.parametrize("overrides,expected", [pytest.param(o, e, id=i) for i, o, e in cases()])
def test_config_composes_and_validates(overrides, expected, isolation_missing, tmp_path, monkeypatch):
    # the paper CLM experts' folders come from $DUME_PAPER_CLM (built by `python -m dume_exp.zoo.paper_clm`);
    # validation does not open them, the paths only have to resolve
    monkeypatch.setenv("DUME_PAPER_CLM", str(tmp_path / "paper_clm"))
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
        if isolation_missing is not None and scores_generated_code(cfg):
            # bubblewrap absent here: validation would (rightly) refuse to execute generated code; opting in is
            # the documented way past that check, the rest of validation still runs
            cfg = compose("config", overrides=[*overrides, "eval.unsafe_code=true"])
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    if expected is not None:
        key, value = expected
        composed = OmegaConf.select(cfg, key, throw_on_missing=True)
        assert holds(composed, value), f"{key}: composed {composed!r}, swept {value!r}"
    validate(cfg)
