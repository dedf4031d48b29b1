"""One experiment run: load the experts, build every selected strategy, score it, write results and tables.

Called by the Hydra app (``python -m dume_exp``) with the composed config.
"""
from __future__ import annotations

import gc
import json
import logging
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedModel

from ..method.router_statistics import text_batches
from ..method.statistics_store import StatisticsStore
from ..native import NATIVE_MODEL_TYPES, annotate, annotate_saved, is_native, save_model
from ..reporting.figures import routing_figure
from ..reporting.publish import publish_tables
from ..reporting.tables import table_rows, write_report
from ..strategies import BuildContext, Candidate, RouterConfig, build
from ..strategies.router_training import RouterTrainingConfig
from ..utils.allocator import active_allocator
from ..utils.cache import read_cached_json, write_checked_json
from .calibration import calibration_record, calibration_sample
from .cells import cell_path
from .config import resolve_auto_precision
from .experts import ExpertSet, load_expert_set
from ..evaluation import Suite
from .scoring import build_suite, score_candidate
from .vllm_scoring import parity_sequences
from .tracking import Tracker, tracker
from .validate import code_sandbox, parse_lambda, selected_strategies, validate

log = logging.getLogger(__name__)


def save_candidate(cand: Candidate, tokenizer: Any, folder: Path, cfg: DictConfig, domains: list[str]) -> None:
    """Save a candidate's model with its tokenizer: a DUME model as a native folder with its model card."""
    if is_native(cand.model):
        annotate(cand.model, domains=domains, calibration=calibration_record(cfg.calibration))
    save_model(cand.model, tokenizer, folder)
    log.info("saved %s to %s", cand.name, folder)


def seed_context(cfg: DictConfig, expert_set: ExpertSet, seed: int) -> tuple[BuildContext, dict[str, list[str]]]:
    """The build context of one seed (its calibration sample, router and training settings) and that sample."""
    random.seed(seed)
    torch.manual_seed(seed)
    texts = calibration_sample(expert_set.calibration, cfg.calibration.max_samples, seed)
    tok, r, training_cfg = expert_set.tokenizer, cfg.router, RouterTrainingConfig(**cfg.router_training)
    router_cfg = replace(RouterConfig(**r), lam=parse_lambda(r.lam))

    def calibration(domains: list[str]) -> list[list[dict[str, torch.Tensor]]]:
        return [text_batches(tok, texts[d], r.max_tokens_per_sequence, cfg.calibration.batch_size) for d in domains]

    def training(domains: list[str]) -> list[dict[str, torch.Tensor]]:
        mixed = [t for d in domains for t in texts[d]]
        random.Random(seed).shuffle(mixed)
        return text_batches(tok, mixed, training_cfg.seq_len, training_cfg.batch_size)

    def context(domains: list[str], experts: list[PreTrainedModel], parent: BuildContext | None) -> BuildContext:
        return BuildContext(
            experts=experts, domains=domains, calibration_batches=lambda: calibration(domains),
            training_batches=lambda: training(domains),
            router=router_cfg, training=training_cfg, bf16_autocast=cfg.calibration.bf16,
            mask_padding=cfg.calibration.mask_padding, seed=seed, progress=cfg.progress,
            stats_store=StatisticsStore() if cfg.calibration.store_statistics else None, parent=parent,
            base=expert_set.base, vocab=str(cfg.experts.vocab), tokenizer=tok,
        )

    subset = expert_set.domains != expert_set.all_domains
    parent = context(expert_set.all_domains, expert_set.all_experts, None) if subset and r.statistics == "fast" else None
    return context(expert_set.domains, expert_set.experts, parent), texts


def run_seed(cfg: DictConfig, expert_set: ExpertSet, suite: Suite, seed: int, track: Tracker,
             save_dir: Path | None = None) -> list[dict[str, Any]]:
    """Build and score every selected strategy for one seed; models of ``cfg.save_models`` strategies (those whose
    routing does not depend on the domain scored) are saved under ``save_dir/<candidate>``."""
    ctx, texts = seed_context(cfg, expert_set, seed)
    tok = expert_set.tokenizer
    v = cfg.eval.vllm
    gate = (parity_sequences(tok, {d: texts[d] for d in expert_set.domains}, v.parity_sequences, v.parity_tokens)
            if cfg.eval.backend == "vllm" else ())
    rows = []
    for strategy in selected_strategies(cfg):
        for cand in build(strategy, ctx):
            log.info("seed %d: scoring %s (built in %.1fs)", seed, cand.name, cand.cost.wall_s)
            row = {"strategy": strategy, **score_candidate(cand, cfg, suite, tok, seed, gate)}
            rows.append(row)
            if save_dir is not None and strategy in cfg.save_models and cand.domain_routing is None:
                save_candidate(cand, tok, save_dir / cand.name, cfg, expert_set.domains)
            track.log({f"seed{seed}/{cand.name}/{d}": v for d, v in row["scores"].items()})
            for domain, layer_counts in row["routing_counts"].items():
                track.log_table(f"routing/seed{seed}/{cand.name}/{domain}",
                                ["layer"] + [f"expert:{e}" for e in expert_set.domains],
                                [[i, *c] for i, c in enumerate(layer_counts)])
            del cand
            gc.collect()
    return rows


def publish(cfg: DictConfig, results: dict[str, Any], run_dir: Path, track: Tracker | None = None) -> None:
    """Write the results, table and routing figure into the run folder and the cell; with ``write_table`` also
    ``results/<experiment>/table.*``, ``results/figures/<experiment>_routing_dume.png`` and the zoo matrix."""
    write_checked_json(run_dir / "results.json", results)
    write_checked_json(cell_path(cfg), results)
    write_report(results, run_dir)
    figure = routing_figure(results, run_dir / "routing_dume.png")
    if cfg.write_table:  # logs the published figure and the claims to the run's tracker
        publish_tables(results, Path(cfg.results_dir) / cfg.experiment, Path(cfg.results_dir) / "figures", track)
    elif figure is not None and track is not None:
        track.log_image("figures/routing_dume", figure)


def record_retention(rows: list[dict[str, Any]], cols: list[str], model_dirs: list[Path]) -> None:
    """Write each saved DUME model's retention row (mean over seeds, percent) into its config and model card."""
    for row in rows:
        for folder in (d / row["name"] for d in model_dirs):
            if (folder / "config.json").exists() and is_native_folder(folder):
                annotate_saved(folder, retention={c: round(row["retention"][c][0], 1) for c in cols})


def collect_only(cfg: DictConfig, run_dir: Path, seeds: list[int]) -> dict[str, Any]:
    """``calibration.collect_only``: put the router statistics of those domains' experts, for every seed of the run,
    into the statistics store and stop (nothing is built, scored or written to a results cell). One such job per
    domain, then the run itself, which loads them all: the statistics of a large expert set collected in parallel."""
    expert_set = load_expert_set(cfg)
    report = {}
    for seed in seeds:
        ctx, _ = seed_context(cfg, expert_set, seed)
        ctx = ctx.parent or ctx  # fast statistics of a subset come from the whole expert set
        names = list(ctx.domains)
        _, rep = ctx.stats_store.statistics(ctx.upcycled(), ctx.calibration_batches(), cfg.router.max_tokens_per_sequence,
                                            names, ctx.progress, ctx.bf16_autocast, ctx.mask_padding,
                                            experts=[names.index(d) for d in cfg.calibration.collect_only])
        report[str(seed)] = {k: rep[k] for k in ("collected", "loaded", "keys", "collect_wall_s")}
        log.info("seed %d: statistics of %s collected, %s already stored", seed, rep["collected"], rep["loaded"])
    write_checked_json(run_dir / "statistics.json", report)
    return {"collect_only": report}


def is_native_folder(folder: Path) -> bool:
    return json.loads((folder / "config.json").read_text()).get("model_type") in NATIVE_MODEL_TYPES


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run the experiment described by ``cfg``; write ``results.json`` in ``run_dir`` and the tables.

    With ``resume`` (default) a configuration whose cell already exists is not run again (this is what
    makes an interrupted multirun resumable: finished cells are skipped, missing ones computed), unless
    ``save_models`` asks for models (rebuilt; their scores come from the evaluation cache).
    """
    validate(cfg)
    resolve_auto_precision(cfg)  # what the run records (resolved config, results) is the precision it uses
    seeds = list(cfg.seeds) if cfg.seeds else [cfg.seed]
    if cfg.calibration.collect_only:
        return collect_only(cfg, run_dir, seeds)
    cell = cell_path(cfg)
    results = read_cached_json(cell) if cfg.resume and not cfg.save_models else None
    if results is not None:
        log.info("cell %s already finished; skipping (resume=false recomputes it)", cell)
        publish(cfg, results, run_dir)
        return results
    start = time.perf_counter()
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    (run_dir / "resolved_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    with tracker(cfg.logger.kind, run_dir, resolved, cfg.logger.project, name=run_dir.name,
                 group=cfg.experiment) as track:
        expert_set = load_expert_set(cfg)
        suite = build_suite(cfg, expert_set)
        model_dirs = {s: run_dir / "models" / (f"seed{s}" if len(seeds) > 1 else "") for s in seeds}
        per_seed = [{"seed": s, "rows": run_seed(cfg, expert_set, suite, s, track, model_dirs[s])} for s in seeds]
        first = per_seed[0]["rows"][0]
        metrics = {d: {"label": f"{suite.domains[d].metric} ({suite.domains[d].filter})",
                       "higher_is_better": suite.domains[d].higher_is_better} for d in expert_set.domains}
        results = {
            "experiment": cfg.experiment, "title": cfg.title or cfg.experiment, "domains": expert_set.domains,
            "metrics": metrics, "seed_list": seeds, "seeds": per_seed, "config": resolved,
            "calibration": calibration_record(cfg.calibration),
            "provenance": expert_set.provenance, "suite": suite.name, "protocol": suite.protocol,
            "allocator": active_allocator(),
            "n_items": first["n"], "wall_s": time.perf_counter() - start,
            "all_domains": expert_set.all_domains, "statistics_mode": str(cfg.router.statistics),
            "code_sandbox": code_sandbox(cfg),
        }
        publish(cfg, results, run_dir, track)
        rows = table_rows(results)
        cols = expert_set.domains + ["avg"]
        record_retention(rows, cols, list(model_dirs.values()))
        for kind in ("raw", "retention"):
            track.log_table(f"table/{kind}", ["strategy"] + cols, [[r["name"]] + [r[kind][c][0] for c in cols] for r in rows])
        track.summary({f"retention/{r['name']}/avg": r["retention"]["avg"][0] for r in rows})
        log.info("wrote %s and %s (%.0fs)", run_dir / "results.json", cell, results["wall_s"])
    return results

