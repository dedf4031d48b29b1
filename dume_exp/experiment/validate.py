"""Checks of a composed config that fail before any model is loaded or the zoo built."""
from __future__ import annotations

import logging
from dataclasses import fields
from typing import Any

from omegaconf import DictConfig

from ..evaluation.tasks.sandbox import ISOLATED, UNISOLATED, SandboxLimits, isolation_problem, require_isolation
from ..strategies import STRATEGIES
from ..strategies.router_training import RouterTrainingConfig
from ..zoo.train import TrainConfig
from .config import check_config
from .vllm_scoring import vllm_installed

log = logging.getLogger(__name__)


def selected_strategies(cfg: DictConfig) -> list[str]:
    """The strategies to run in registry order; ``dense_expert`` always, as every table's retention reference
    (its scores are cached, so a subset run costs one evaluation of each expert once)."""
    chosen = [name for name, on in cfg.strategy.items() if on]
    unknown = sorted(set(chosen) - set(STRATEGIES))
    if unknown:
        raise ValueError(f"Unknown strategy {unknown}; valid choices: {sorted(STRATEGIES)}.")
    if not chosen:
        raise ValueError(f"No strategy selected; use strategy=all or e.g. strategy=[dume,oracle] ({sorted(STRATEGIES)}).")
    if "dense_expert" not in chosen:
        log.info("also scoring dense_expert: the retention reference of every domain")
    return [name for name in STRATEGIES if name in chosen or name == "dense_expert"]


def parse_lambda(value: Any) -> float | str:
    """``router.lam``: a finite number ≥ 0, or ``auto`` (per-layer generalised cross-validation)."""
    if value == "auto":
        return "auto"
    try:
        lam = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"router.lam must be a number ≥ 0 or 'auto'; got {value!r}.") from None
    if not lam >= 0 or lam == float("inf"):
        raise ValueError(f"router.lam must be a finite number ≥ 0 or 'auto'; got {value!r}.")
    return lam


def validate(cfg: DictConfig) -> None:
    """Fail before any model is loaded or the zoo built: the schema's keys and ranges
    (:func:`~dume_exp.experiment.config.check_config`; OmegaConf checked the choices at compose time), strategy
    names, λ, the router-training checkpoints, the calibration protocol, and the settings that must agree with each other (domains,
    ``router.top_k``, the zoo's)."""
    check_config(cfg)
    selected_strategies(cfg)
    parse_lambda(cfg.router.lam)
    RouterTrainingConfig(**cfg.router_training)  # its own checks: router_training.checkpoints against steps
    cal = cfg.calibration
    if cal.split == "test" and not cal.allow_eval_split:
        raise ValueError("calibration.split=test uses the evaluation data for the routers (test leakage, the reference "
                         "code's default); set calibration.allow_eval_split=true to do it anyway (tables mark it).")
    if not isinstance(cal.mask_padding, bool):
        raise ValueError(f"calibration.mask_padding must be true or false (false: padding tokens enter the router "
                         f"statistics, as in the reference implementation); got {cal.mask_padding!r}.")
    if cfg.experts.source == "zoo":
        check_zoo(cfg)
    check_domains(cfg)
    check_collect_only(cfg)
    if cfg.eval.backend == "vllm":
        check_vllm(cfg)
    if cfg.eval.processes > 1 and cfg.eval.backend != "hf":
        raise ValueError(f"eval.processes={cfg.eval.processes} needs eval.backend=hf (scoring in launched processes); "
                         "the in-memory backend scores in this one process.")
    if scores_generated_code(cfg):
        require_isolation(sandbox_limits(cfg))
    unsaved = sorted(set(cfg.save_models) - set(selected_strategies(cfg)))
    if unsaved:
        raise ValueError(f"save_models names {unsaved}, which this run does not build; choose among the selected "
                         f"strategies {selected_strategies(cfg)}.")


def check_collect_only(cfg: DictConfig) -> None:
    """``calibration.collect_only`` names distinct domains whose experts' statistics this run collects, and the
    store is on (it is where they go)."""
    wanted = list(cfg.calibration.collect_only)
    if not wanted:
        return
    if not cfg.calibration.store_statistics:
        raise ValueError("calibration.collect_only puts statistics into the statistics store; it needs "
                         "calibration.store_statistics=true.")
    subset = list(cfg.experts.subset or [])
    collected = subset if subset and cfg.router.statistics == "exact" else list(cfg.experts.domains)
    unknown = [d for d in wanted if d not in collected]
    if unknown or len(set(wanted)) != len(wanted):
        raise ValueError(f"calibration.collect_only={wanted} must name distinct domains among those whose statistics "
                         f"this run collects, {collected}; {unknown or 'a domain is repeated'}.")


def check_vllm(cfg: DictConfig) -> None:
    """``eval.backend=vllm`` serves stock MoE classes: vLLM installed, no router bias, one process (vLLM spreads a
    model over GPUs itself: ``eval.vllm.tensor_parallel_size``)."""
    if not vllm_installed():
        raise ValueError("eval.backend=vllm needs vLLM, which is not installed (`pip install vllm` on a machine with "
                         "an NVIDIA GPU); elsewhere score with eval.backend=inmemory or eval.backend=hf.")
    if cfg.eval.processes != 1:
        raise ValueError(f"eval.backend=vllm runs one engine; eval.processes={cfg.eval.processes} applies to "
                         "eval.backend=hf. Spread a large model over GPUs with eval.vllm.tensor_parallel_size.")
    if cfg.router.bias:
        raise ValueError("eval.backend=vllm scores an export to a stock MoE class, whose router has no bias: add "
                         "router.bias=false (the same statistics, refit without the constant feature), or score the "
                         "native model with eval.backend=inmemory or eval.backend=hf.")
    biased = [s for s in selected_strategies(cfg) if STRATEGIES[s].router_bias]
    if biased:
        raise ValueError(f"eval.backend=vllm cannot serve {biased}: their routers have a bias by construction (a "
                         "random init, centroid offsets or trained biases), which no stock MoE class represents. "
                         "Leave them out of strategy=[...] or score them with eval.backend=inmemory or hf.")


def sandbox_limits(cfg: DictConfig) -> SandboxLimits:
    return SandboxLimits(unsafe_without_isolation=cfg.eval.unsafe_code)


def scores_generated_code(cfg: DictConfig) -> bool:
    """Whether the run executes model-written code (the coding domain of a reasoning suite)."""
    return cfg.eval.suite != "zoo_clm" and "coding" in cfg.experts.domains


def code_sandbox(cfg: DictConfig) -> str | None:
    """How this run's generated code is executed (``results["code_sandbox"]``): ``None`` when it scores none."""
    if not scores_generated_code(cfg):
        return None
    return ISOLATED if isolation_problem(sandbox_limits(cfg)) is None else UNISOLATED


def check_domains(cfg: DictConfig) -> None:
    """``experts.domains`` names ≥ 2 distinct domains; ``experts.subset``, ``eval.domain_limit`` and
    ``eval.domain_max_gen_toks`` name domains of it; ``router.top_k`` routes to at most every expert of the run."""
    domains = list(cfg.experts.domains)
    if len(domains) < 2 or len(set(domains)) != len(domains):
        raise ValueError(f"experts.domains must name ≥ 2 distinct domains (one expert each); got {domains}.")
    subset = list(cfg.experts.subset or [])
    if subset and (len(subset) < 2 or not set(subset) <= set(domains) or len(set(subset)) != len(subset)):
        raise ValueError(f"experts.subset must name ≥ 2 distinct domains of {domains}; got {subset}.")
    for knob in ("domain_limit", "domain_max_gen_toks"):
        unknown = sorted(set(cfg.eval[knob]) - set(domains))
        if unknown:
            raise ValueError(f"eval.{knob} names unknown domain(s) {unknown}; use domains of experts.domains "
                             f"{domains}.")
    n_experts = len(subset or domains)
    if n_experts and cfg.router.top_k > n_experts:
        raise ValueError(f"router.top_k must be between 1 and the number of experts ({n_experts}); "
                         f"got {cfg.router.top_k}.")


def check_zoo(cfg: DictConfig) -> None:
    """The zoo of ``experts.setting`` has an expert for every domain, and ``zoo.*`` is a valid fine-tuning config."""
    from ..utils.data_layout import SETTING_DOMAINS

    built = list(SETTING_DOMAINS[cfg.experts.setting])
    unknown = sorted(set(cfg.experts.domains) - set(built))
    if unknown:
        raise ValueError(f"experts.domains names {unknown}, for which the {cfg.experts.setting} zoo has no expert; "
                         f"choose among {built}.")
    try:
        TrainConfig(**{f.name: cfg.zoo[f.name] for f in fields(TrainConfig)})
    except ValueError as err:
        raise ValueError(f"zoo: {err}") from None

