"""One experiment run: load the experts, build every selected strategy, score it with lm-eval, write results.

Called by the Hydra entry point (``python -m dume_exp``) with the composed config.
"""
from __future__ import annotations

import copy
import gc
import json
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .allocator import active_allocator
from .cache import cache_root, file_sha256, recipe_key, write_json_atomic
from .evaluation import EvalResult, Suite, clm_suite, evaluate, paper_reasoning_suite, reasoning_suite
from .moe import moe_blocks, reset_routing_counts, routing_counts
from .report import publish_tables, table_rows, write_report
from .router_training import RouterTrainingConfig
from .stats_store import StatisticsStore, tensor_fingerprint
from .strategies import STRATEGIES, BuildContext, Candidate, RouterConfig, build
from .tracking import Tracker, tracker

log = logging.getLogger(__name__)
SPLIT_FILES = {"train": ["train.jsonl"], "validation": ["validation.jsonl"], "test": ["test.jsonl", "*_test.jsonl"]}


@dataclass
class ExpertSet:
    """Every expert of the set (``all_*``) and the active subset (``experts.subset``, default all)."""

    all_experts: list[PreTrainedModel]
    all_domains: list[str]
    domains: list[str]
    tokenizer: Any
    data_dir: Path
    nltk_data: Path | None
    provenance: dict[str, Any]
    base: str | None = None

    @property
    def experts(self) -> list[PreTrainedModel]:
        return [self.all_experts[self.all_domains.index(d)] for d in self.domains]


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
    """Fail before any model is loaded: strategy names, λ, calibration split."""
    selected_strategies(cfg)
    parse_lambda(cfg.router.lam)
    cal = cfg.calibration
    if cal.split not in SPLIT_FILES:
        raise ValueError(f"calibration.split must be one of {list(SPLIT_FILES)}; got {cal.split!r}.")
    if cal.split == "test" and not cal.allow_eval_split:
        raise ValueError("calibration.split=test uses the evaluation data for the routers (test leakage, the reference "
                         "code's default); set calibration.allow_eval_split=true to do it anyway (tables mark it).")
    if cal.max_samples < 1:
        raise ValueError(f"calibration.max_samples must be ≥ 1; got {cal.max_samples}.")
    subset = list(cfg.experts.subset or [])
    if subset and (len(subset) < 2 or not set(subset) <= set(cfg.experts.domains) or len(set(subset)) != len(subset)):
        raise ValueError(f"experts.subset must name ≥ 2 distinct domains of {list(cfg.experts.domains)}; got {subset}.")
    if cfg.router.statistics not in ("exact", "fast"):
        raise ValueError(f"router.statistics must be 'exact' or 'fast'; got {cfg.router.statistics!r}.")


def load_expert_set(cfg: DictConfig) -> ExpertSet:
    """The experts of ``cfg.experts`` (building the embedded zoo when needed), their tokenizer and data."""
    ec = cfg.experts
    dtype = getattr(torch, ec.dtype)
    if ec.source == "zoo":
        from .zoo.build import ensure_zoo

        zoo = ensure_zoo(ec.setting, cfg.zoo, progress=cfg.progress)
        paths = {d: zoo.experts[d] for d in ec.domains}
        data_dir, nltk_data, provenance, base = zoo.data_dir, zoo.nltk_data, zoo.manifest, str(zoo.base)
    elif ec.source == "pretrained":
        missing = [d for d in ec.domains if d not in ec.models]
        if missing:
            raise ValueError(f"experts.models has no model for domain(s) {missing}; give experts.models.<domain>=<hub id or folder>.")
        paths = {d: ec.models[d] for d in ec.domains}
        if not ec.data_dir:
            raise ValueError("experts.data_dir is required with experts.source=pretrained (calibration and evaluation data "
                             "in the zoo layout: <data_dir>/<domain>/{train,test}.jsonl).")
        data_dir, nltk_data, provenance, base = Path(ec.data_dir), None, {"models": dict(paths)}, ec.base
    else:
        raise ValueError(f"experts.source must be 'zoo' or 'pretrained'; got {ec.source!r}.")
    experts = [AutoModelForCausalLM.from_pretrained(str(paths[d]), dtype=dtype).eval() for d in ec.domains]
    tokenizer = AutoTokenizer.from_pretrained(str(ec.tokenizer or paths[ec.domains[0]]))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    active = list(ec.subset) if ec.subset else list(ec.domains)
    return ExpertSet(experts, list(ec.domains), active, tokenizer, Path(data_dir), nltk_data, provenance, base)


def domain_texts(data_dir: Path, domain: str, split: str) -> list[str]:
    """Texts of one domain's split: rows' ``text``, else their question/prompt (and answer) fields."""
    files = sorted({f for pattern in SPLIT_FILES[split] for f in (data_dir / domain).glob(pattern)})
    if not files:
        raise FileNotFoundError(f"No {split} data for domain {domain!r} under {data_dir / domain} "
                                f"(looked for {SPLIT_FILES[split]}).")
    texts = []
    for f in files:
        for line in f.read_text().splitlines():
            row = json.loads(line)
            text = row.get("text") or "\n".join(str(row[k]) for k in ("question", "prompt", "answer") if k in row)
            if text.strip():
                texts.append(text)
    return texts


def calibration_texts(cfg: DictConfig, data_dir: Path, domains: list[str], seed: int) -> dict[str, list[str]]:
    cal = cfg.calibration
    out = {}
    for d in domains:
        texts = domain_texts(data_dir, d, cal.split)
        random.Random(f"{seed}-{d}").shuffle(texts)
        out[d] = texts[: cal.max_samples]
    return out


def make_batches(tokenizer: Any, texts: list[str], max_len: int, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Tokenise (truncating to ``max_len``) and right-pad into batches."""
    batches = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i : i + batch_size], truncation=True, max_length=max_len, padding=True,
                        return_tensors="pt")
        batches.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return batches


def build_suite(cfg: DictConfig, expert_set: ExpertSet) -> Suite:
    ev = cfg.eval
    common = dict(max_gen_toks=ev.max_gen_toks, protocol=ev.protocol, nltk_data=expert_set.nltk_data,
                  num_fewshot=ev.num_fewshot, domains=expert_set.domains)
    langs = list(ev.arc_languages) if ev.arc_languages else None
    if ev.suite == "zoo_clm":
        suite = clm_suite(expert_set.data_dir, expert_set.domains, split=ev.split)
    elif ev.suite == "zoo_reasoning":
        suite = reasoning_suite(expert_set.data_dir, math_sets=list(ev.math_sets), coding_sets=list(ev.coding_sets),
                                arc_languages=langs, **common)
    elif ev.suite == "paper_reasoning":
        suite = paper_reasoning_suite(**({"arc_languages": langs} if langs else {}), **common)
    else:
        raise ValueError(f"eval.suite must be zoo_clm, zoo_reasoning or paper_reasoning; got {ev.suite!r}.")
    for knob in ("domain_max_gen_toks", "domain_limit"):
        unknown = sorted(set(ev[knob]) - set(suite.domains))
        if unknown:
            raise ValueError(f"eval.{knob} names unknown domain(s) {unknown}; domains: {list(suite.domains)}.")
    capped = {d: suite.select([d]).with_max_gen_toks(n).domains[d] for d, n in ev.domain_max_gen_toks.items()}
    return replace(suite, domains={d: capped.get(d, spec) for d, spec in suite.domains.items()})


def content_keyed(obj: Any) -> Any:
    """``obj`` (a task config) with every existing file path replaced by the file's sha256: evaluation keys follow
    the data's contents, not where a (re)built data folder happens to live."""
    if isinstance(obj, Mapping):
        return {k: content_keyed(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [content_keyed(v) for v in obj]
    if isinstance(obj, str) and len(obj) < 4096 and Path(obj).is_file():
        return {"sha256": file_sha256(obj)}
    return obj


def domain_limit(cfg: DictConfig, domain: str) -> int | None:
    """Items per task evaluated in ``domain``: ``eval.domain_limit[domain]``, else ``eval.limit``."""
    return cfg.eval.domain_limit.get(domain, cfg.eval.limit)


def evaluation_key(model_fingerprint: str, model: torch.nn.Module, cand: Candidate, domain: str, suite: Suite,
                   cfg: DictConfig, seed: int) -> str:
    """Hash of everything that determines one domain's score: weights (``model_fingerprint``, computed once per
    candidate by the caller), routing, tasks and data, eval knobs."""
    tasks = suite.domains[domain].tasks
    ev = {k: cfg.eval[k] for k in ("batch_size", "protocol", "apply_chat_template", "max_gen_toks", "bootstrap_iters")}
    ev["limit"] = domain_limit(cfg, domain)
    return recipe_key({"model": model_fingerprint, "candidate": cand.name, "domain_routing": cand.domain_routing,
                       "domain": domain, "tasks": content_keyed(list(tasks)),
                       "eval": ev, "seed": seed, "routing": [(b.top_k, b.temperature) for b in moe_blocks(model)]},
                      length=24)


def score_candidate(cand: Candidate, cfg: DictConfig, suite: Suite, tokenizer: Any, seed: int) -> dict[str, Any]:
    """Score every domain (entering the candidate's routing context per domain) and read routing counts.

    Scores are cached under :func:`evaluation_key` (``eval.cache``), so a dense expert or an unchanged
    candidate is evaluated once across runs and sweep cells.
    """
    ev = cfg.eval
    model = cand.model
    if ev.bf16 and next(model.parameters()).dtype == torch.float32:
        model = copy.deepcopy(model).to(torch.bfloat16)  # never convert the shared experts in place
    has_moe = bool(moe_blocks(model))
    scores, stderr, n, counts, wall, cached = {}, {}, {}, {}, 0.0, []
    fingerprint = tensor_fingerprint(model.state_dict().values())  # hashing the weights once, not per domain
    for domain in suite.domains:
        key = evaluation_key(fingerprint, model, cand, domain, suite, cfg, seed)
        key_file = cache_root() / "evaluations" / f"{key}.json"
        if ev.cache and key_file.exists():
            entry = json.loads(key_file.read_text())
            cached.append(domain)
        else:
            if has_moe:
                reset_routing_counts(model)
            with cand.route_domain(model, domain):
                res: EvalResult = evaluate(model, tokenizer, suite.select([domain]), batch_size=ev.batch_size,
                                           limit=domain_limit(cfg, domain), bootstrap_iters=ev.bootstrap_iters, seed=seed,
                                           apply_chat_template=ev.apply_chat_template)
            s = res.domains[domain]
            entry = {"score": s.score, "stderr": s.stderr, "n": s.n, "wall_s": res.wall_s,
                     "routing_counts": routing_counts(model).tolist() if has_moe else None}
            if ev.cache:
                write_json_atomic(key_file, entry)
        scores[domain], stderr[domain], n[domain] = entry["score"], entry["stderr"], entry["n"]
        wall += entry["wall_s"]
        if entry["routing_counts"] is not None:
            counts[domain] = entry["routing_counts"]
    return {"name": cand.name, "scores": scores, "stderr": stderr, "n": n, "eval_wall_s": wall,
            "eval_cached": cached, "cost": asdict(cand.cost), "info": cand.info, "routing_counts": counts}


def run_seed(cfg: DictConfig, expert_set: ExpertSet, suite: Suite, seed: int, track: Tracker) -> list[dict[str, Any]]:
    random.seed(seed)
    torch.manual_seed(seed)
    texts = calibration_texts(cfg, expert_set.data_dir, expert_set.all_domains, seed)
    tok, r = expert_set.tokenizer, cfg.router
    btx_kwargs = {k: v for k, v in OmegaConf.to_container(cfg.btx).items() if k not in ("batch_size", "seq_len")}

    def calibration(domains: list[str]) -> list[list[dict[str, torch.Tensor]]]:
        return [make_batches(tok, texts[d], r.max_tokens_per_sequence, cfg.calibration.batch_size) for d in domains]

    def training(domains: list[str]) -> list[dict[str, torch.Tensor]]:
        mixed = [t for d in domains for t in texts[d]]
        random.Random(seed).shuffle(mixed)
        return make_batches(tok, mixed, cfg.btx.seq_len, cfg.btx.batch_size)

    def context(domains: list[str], experts: list[PreTrainedModel], parent: BuildContext | None) -> BuildContext:
        return BuildContext(
            experts=experts, domains=domains, calibration_batches=lambda: calibration(domains),
            training_batches=lambda: training(domains),
            router=RouterConfig(r.top_k, r.temperature, parse_lambda(r.lam), r.normalize, r.max_tokens_per_sequence,
                                cfg.calibration.bf16),
            training=RouterTrainingConfig(**btx_kwargs), seed=seed, progress=cfg.progress,
            stats_store=StatisticsStore() if cfg.calibration.store_statistics else None, parent=parent,
            base=expert_set.base,
        )

    subset = expert_set.domains != expert_set.all_domains
    parent = context(expert_set.all_domains, expert_set.all_experts, None) if subset and r.statistics == "fast" else None
    ctx = context(expert_set.domains, expert_set.experts, parent)
    rows = []
    for strategy in selected_strategies(cfg):
        for cand in build(strategy, ctx):
            log.info("seed %d: scoring %s (built in %.1fs)", seed, cand.name, cand.cost.wall_s)
            row = {"strategy": strategy, **score_candidate(cand, cfg, suite, tok, seed)}
            rows.append(row)
            track.log({f"seed{seed}/{cand.name}/{d}": v for d, v in row["scores"].items()})
            for domain, layer_counts in row["routing_counts"].items():
                track.log_table(f"routing/seed{seed}/{cand.name}/{domain}",
                                ["layer"] + [f"expert:{e}" for e in expert_set.domains],
                                [[i, *c] for i, c in enumerate(layer_counts)])
            del cand
            gc.collect()
    return rows


# Config entries that do not change a run's numbers (left out of its cell key).
PRESENTATION_KEYS = ("results_dir", "progress", "logger", "title", "resume", "write_table")


def code_versions() -> dict[str, int]:
    """Versions of the code whose changes alter results without a config change (expert data and training,
    statistics collection, router training)."""
    from .router_training import ROUTER_TRAINING_VERSION
    from .stats_store import COLLECTOR_VERSION
    from .zoo.clm_data import CLM_DATA_VERSION
    from .zoo.reasoning_data import REASONING_DATA_VERSION
    from .zoo.train import TRAIN_CODE_VERSION

    return {"router_training": ROUTER_TRAINING_VERSION, "collector": COLLECTOR_VERSION, "clm_data": CLM_DATA_VERSION,
            "reasoning_data": REASONING_DATA_VERSION, "expert_training": TRAIN_CODE_VERSION}


def cell_path(cfg: DictConfig) -> Path:
    """Where the results of this exact configuration are kept, keyed by the hash of what determines them
    (the configuration and :func:`code_versions`)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    config = {k: v for k, v in resolved.items() if k not in PRESENTATION_KEYS}
    key = recipe_key({"config": config, "code": code_versions()}, length=20)
    return Path(cfg.results_dir) / cfg.experiment / "cells" / f"{key}.json"


def publish(cfg: DictConfig, results: dict[str, Any], run_dir: Path, track: Tracker | None = None) -> None:
    """Write the results, table and routing figure into the run folder and the cell; with ``write_table`` also
    ``results/<experiment>/table.*``, ``results/figures/<experiment>_routing_dume.png`` and the zoo matrix."""
    from .figures import routing_figure

    write_json_atomic(run_dir / "results.json", results)
    write_json_atomic(cell_path(cfg), results)
    write_report(results, run_dir)
    figure = routing_figure(results, run_dir / "routing_dume.png")
    if figure is not None and track is not None:
        track.log_image("figures/routing_dume", figure)
    if cfg.write_table:
        publish_tables(results, Path(cfg.results_dir) / cfg.experiment, Path(cfg.results_dir) / "figures")


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run the experiment described by ``cfg``; write ``results.json`` in ``run_dir`` and the tables.

    With ``resume`` (default) a configuration whose cell already exists is not run again (this is what
    makes an interrupted multirun resumable: finished cells are skipped, missing ones computed).
    """
    validate(cfg)
    cell = cell_path(cfg)
    if cfg.resume and cell.exists():
        results = json.loads(cell.read_text())
        log.info("cell %s already finished; skipping (resume=false recomputes it)", cell)
        publish(cfg, results, run_dir)
        return results
    start = time.perf_counter()
    seeds = list(cfg.seeds) if cfg.seeds else [cfg.seed]
    resolved = OmegaConf.to_container(cfg, resolve=True)
    (run_dir / "resolved_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    with tracker(cfg.logger.kind, run_dir, resolved, cfg.logger.project, name=run_dir.name,
                 group=cfg.experiment) as track:
        expert_set = load_expert_set(cfg)
        suite = build_suite(cfg, expert_set)
        per_seed = [{"seed": s, "rows": run_seed(cfg, expert_set, suite, s, track)} for s in seeds]
        first = per_seed[0]["rows"][0]
        metrics = {d: {"label": f"{suite.domains[d].metric} ({suite.domains[d].filter})",
                       "higher_is_better": suite.domains[d].higher_is_better} for d in expert_set.domains}
        results = {
            "experiment": cfg.experiment, "title": cfg.title or cfg.experiment, "domains": expert_set.domains,
            "metrics": metrics, "seed_list": seeds, "seeds": per_seed, "config": resolved,
            "calibration": {"split": cfg.calibration.split, "max_samples": cfg.calibration.max_samples,
                            "eval_split_leak": cfg.calibration.split == "test"},
            "provenance": expert_set.provenance, "suite": suite.name, "protocol": suite.protocol,
            "allocator": active_allocator(),
            "n_items": first["n"], "wall_s": time.perf_counter() - start,
            "all_domains": expert_set.all_domains, "statistics_mode": cfg.router.statistics,
        }
        publish(cfg, results, run_dir, track)
        rows = table_rows(results)
        cols = expert_set.domains + ["avg"]
        for kind in ("raw", "retention"):
            track.log_table(f"table/{kind}", ["strategy"] + cols, [[r["name"]] + [r[kind][c][0] for c in cols] for r in rows])
        track.summary({f"retention/{r['name']}/avg": r["retention"]["avg"][0] for r in rows})
        log.info("wrote %s and %s (%.0fs)", run_dir / "results.json", cell, results["wall_s"])
    return results
