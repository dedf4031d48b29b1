"""One experiment run: load the experts, build every selected strategy, score it with lm-eval, write results.

Called by the Hydra entry point (``python -m dume_exp``) with the composed config.
"""
from __future__ import annotations

import copy
import functools
import gc
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .allocator import active_allocator
from .cache import cache_root, file_sha256, read_cached_json, recipe_key, write_checked_json
from .config import check_config
from .evaluation import EvalResult, Suite, clm_suite, evaluate, paper_reasoning_suite, reasoning_suite
from .integrity import check_finite_parameters
from .moe import moe_blocks, reset_routing_counts, routing_counts
from .report import publish_tables, table_rows, write_report
from .router_training import RouterTrainingConfig
from .stats_store import StatisticsStore, tensor_fingerprint
from .strategies import STRATEGIES, BuildContext, Candidate, RouterConfig, build
from .tasks.sandbox import ISOLATED, UNISOLATED, SandboxLimits, isolation_problem, require_isolation
from .tracking import Tracker, tracker
from .native import NATIVE_MODEL_TYPES, annotate, annotate_saved, is_native
from .zoo.train import TrainConfig

log = logging.getLogger(__name__)
SPLIT_FILES = {"train": ["train.jsonl"], "validation": ["validation.jsonl"], "test": ["test.jsonl", "*_test.jsonl"]}
PROMPT_FIELDS = ("question", "prompt")  # the fields of a row that make its prompt


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
    calibration: dict[str, list[str]]  # every calibration text per domain (all domains), see calibration_texts
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
    """Fail before any model is loaded or the zoo built: the schema's keys, choices and ranges
    (:func:`~dume_exp.config.check_config`), strategy names, λ, the calibration protocol, and the settings that
    must agree with each other (domains, ``router.top_k``, the zoo's)."""
    check_config(cfg)
    selected_strategies(cfg)
    parse_lambda(cfg.router.lam)
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
    if scores_generated_code(cfg):
        require_isolation(sandbox_limits(cfg))
    unsaved = sorted(set(cfg.save_models) - set(selected_strategies(cfg)))
    if unsaved:
        raise ValueError(f"save_models names {unsaved}, which this run does not build; choose among the selected "
                         f"strategies {selected_strategies(cfg)}.")


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
    """``experts.subset``, ``eval.domain_limit`` and ``eval.domain_max_gen_toks`` name domains of ``experts.domains``;
    ``router.top_k`` routes to at most every expert of the run."""
    domains = list(cfg.experts.domains)
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
    from .zoo.clm_data import CLM_DOMAINS
    from .zoo.reasoning_data import DOMAINS as REASONING_DOMAINS

    built = list({"clm": CLM_DOMAINS, "reasoning": REASONING_DOMAINS}[cfg.experts.setting])
    unknown = sorted(set(cfg.experts.domains) - set(built))
    if unknown:
        raise ValueError(f"experts.domains names {unknown}, for which the {cfg.experts.setting} zoo has no expert; "
                         f"choose among {built}.")
    try:
        TrainConfig(**{f.name: cfg.zoo[f.name] for f in fields(TrainConfig)})
    except ValueError as err:
        raise ValueError(f"zoo: {err}") from None


def looks_local(name: str) -> bool:
    """Whether ``name`` means a folder rather than a hub id (``org/name``): absolute, ``./``, ``../`` or ``~``,
    more than one ``/``, or a parent folder that exists."""
    path = Path(name)
    return (path.is_absolute() or name.startswith(("./", "../", "~")) or name.count("/") > 1
            or (path.parent != Path(".") and path.parent.exists()))


def check_folders(ec: DictConfig) -> None:
    """Every folder of ``experts`` given as a local path exists (transformers would report a malformed hub id)."""
    named = {f"experts.models.{d}": ec.models.get(d) for d in ec.domains} if ec.source == "pretrained" else {}
    named.update({f"experts.{k}": ec[k] for k in ("base", "tokenizer", "data_dir")})
    for key, name in named.items():
        if name and looks_local(str(name)) and not Path(name).expanduser().exists():
            raise FileNotFoundError(f"{key}: folder not found: {name} (a local path; give an existing folder, or a "
                                    f"hub id org/name).")


def pretrained_paths(ec: DictConfig) -> dict[str, str]:
    """``experts.models`` of each domain, with the data folder ``experts.source=pretrained`` needs."""
    missing = [d for d in ec.domains if d not in ec.models]
    if missing:
        raise ValueError(f"experts.models has no model for domain(s) {missing}; give "
                         f"experts.models.<domain>=<hub id or folder>.")
    if not ec.data_dir:
        raise ValueError("experts.data_dir is required with experts.source=pretrained (calibration and evaluation data "
                         "in the zoo layout: <data_dir>/<domain>/{train,test}.jsonl).")
    return {d: ec.models[d] for d in ec.domains}


def load_expert_set(cfg: DictConfig) -> ExpertSet:
    """The experts of ``cfg.experts`` (building the embedded zoo when needed), their tokenizer and data; given folders
    are checked first (:func:`check_folders`), an environment matter that :func:`validate` leaves here."""
    ec = cfg.experts
    check_folders(ec)
    dtype = getattr(torch, ec.dtype)
    if ec.source == "zoo":
        from .zoo.build import ensure_zoo

        zoo = ensure_zoo(ec.setting, cfg.zoo, progress=cfg.progress)
        paths = {d: zoo.experts[d] for d in ec.domains}
        data_dir, nltk_data, provenance, base = zoo.data_dir, zoo.nltk_data, zoo.manifest, str(zoo.base)
    else:  # pretrained: check_config admits no other source
        paths = pretrained_paths(ec)
        data_dir, nltk_data, provenance, base = Path(ec.data_dir), None, {"models": dict(paths)}, ec.base
    tokenizer = AutoTokenizer.from_pretrained(str(ec.tokenizer or paths[ec.domains[0]]))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = calibration_texts(cfg, Path(data_dir), list(ec.domains), tokenizer)  # bad data fails before the models load
    experts = [AutoModelForCausalLM.from_pretrained(str(paths[d]), dtype=dtype).eval() for d in ec.domains]
    for d, model in zip(ec.domains, experts):  # once, at load: a NaN would otherwise surface as NaN routers
        check_finite_parameters(model, f"expert {d!r} ({paths[d]})")
    active = list(ec.subset) if ec.subset else list(ec.domains)
    return ExpertSet(experts, list(ec.domains), active, tokenizer, Path(data_dir), nltk_data, provenance, texts, base)


def assistant_header(tokenizer: Any) -> str:
    """What the tokenizer's chat template writes before an assistant turn (its generation prompt), e.g. ChatML's
    ``<|im_start|>assistant\\n``."""
    fix = "use calibration.text=prompt_answer, or a tokenizer whose chat template has one (experts.tokenizer)"
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"calibration.text=prompt cuts chat transcripts after the assistant header of the tokenizer's "
                         f"chat template, but the tokenizer has no chat template; {fix}.")
    turn = [{"role": "user", "content": "PLACEHOLDER"}]
    closed = tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=False)
    opened = tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
    if not opened.startswith(closed) or not opened[len(closed):].strip():
        raise ValueError(f"calibration.text=prompt cuts chat transcripts after the assistant header, but the "
                         f"tokenizer's chat template renders no generation prompt; {fix}.")
    return opened[len(closed):]


def row_text(row: Mapping[str, Any], mode: str, header: Callable[[], str]) -> str:
    """One data row's calibration text.

    ``prompt_answer``: its ``text``, else its question/prompt and answer fields. ``prompt``: its question/prompt
    fields, else its ``text`` (a chat transcript) up to and including the first assistant header (``header()``).
    """
    if mode == "prompt_answer":
        return row.get("text") or "\n".join(str(row[k]) for k in (*PROMPT_FIELDS, "answer") if k in row)
    prompt = [str(row[k]) for k in PROMPT_FIELDS if k in row]
    if prompt:
        return "\n".join(prompt)
    text, head = str(row.get("text", "")), header()
    end = text.find(head)
    if end < 0:
        fields = "/".join(PROMPT_FIELDS)
        raise ValueError(f"calibration.text=prompt: the row has no {fields} field and its text is no chat transcript "
                         f"with the assistant header {head!r} of the tokenizer's chat template; give the rows {fields} "
                         f"fields, use the experts' own tokenizer (experts.tokenizer) or calibration.text=prompt_answer.")
    return text[: end + len(head)]


def domain_texts(data_dir: Path, domain: str, split: str, mode: str, header: Callable[[], str]) -> list[str]:
    """Non-blank texts of one domain's split, one per row (:func:`row_text` with ``mode`` and ``header``)."""
    files = sorted({f for pattern in SPLIT_FILES[split] for f in (data_dir / domain).glob(pattern)})
    if not files:
        raise FileNotFoundError(f"No {split} data for domain {domain!r} under {data_dir / domain} "
                                f"(looked for {SPLIT_FILES[split]}).")
    texts = []
    for f in files:
        for number, line in enumerate(f.read_text().splitlines(), 1):
            try:
                text = row_text(json.loads(line), mode, header)
            except ValueError as err:
                raise ValueError(f"{f}:{number}: {err}") from None
            if text.strip():
                texts.append(text)
    return texts


def calibration_texts(cfg: DictConfig, data_dir: Path, domains: list[str], tokenizer: Any) -> dict[str, list[str]]:
    """Every text of ``calibration.split`` per domain, as ``calibration.text`` says (the tokenizer's assistant
    header is derived only when a chat transcript has to be cut)."""
    header = functools.cache(functools.partial(assistant_header, tokenizer))
    return {d: domain_texts(data_dir, d, cfg.calibration.split, cfg.calibration.text, header) for d in domains}


def calibration_sample(texts: Mapping[str, list[str]], max_samples: int, seed: int) -> dict[str, list[str]]:
    """One seed's calibration texts per domain: a seeded shuffle, then the first ``max_samples``."""
    out = {}
    for d, every in texts.items():
        shuffled = list(every)
        random.Random(f"{seed}-{d}").shuffle(shuffled)
        out[d] = shuffled[:max_samples]
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
                  num_fewshot=ev.num_fewshot, domains=expert_set.domains, sandbox=sandbox_limits(cfg))
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
    # validate checked these domains against experts.domains; an experts.subset run scores some of them
    capped = {d: suite.select([d]).with_max_gen_toks(n).domains[d] for d, n in ev.domain_max_gen_toks.items()
              if d in suite.domains}
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
        entry = read_cached_json(key_file) if ev.cache else None
        if entry is not None:
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
                write_checked_json(key_file, entry)
        scores[domain], stderr[domain], n[domain] = entry["score"], entry["stderr"], entry["n"]
        wall += entry["wall_s"]
        if entry["routing_counts"] is not None:
            counts[domain] = entry["routing_counts"]
    return {"name": cand.name, "scores": scores, "stderr": stderr, "n": n, "eval_wall_s": wall,
            "eval_cached": cached, "cost": asdict(cand.cost), "info": cand.info, "routing_counts": counts}


def save_candidate(cand: Candidate, tokenizer: Any, folder: Path, cfg: DictConfig, domains: list[str]) -> None:
    """Save a candidate's model with its tokenizer: a DUME model as a native folder with its model card."""
    if is_native(cand.model):
        annotate(cand.model, domains=domains, calibration=calibration_record(cfg.calibration))
        cand.model.save_pretrained(folder, tokenizer=tokenizer)
    else:
        cand.model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    log.info("saved %s to %s", cand.name, folder)


def run_seed(cfg: DictConfig, expert_set: ExpertSet, suite: Suite, seed: int, track: Tracker,
             save_dir: Path | None = None) -> list[dict[str, Any]]:
    """Build and score every selected strategy for one seed; models of ``cfg.save_models`` strategies (those whose
    routing does not depend on the domain scored) are saved under ``save_dir/<candidate>``."""
    random.seed(seed)
    torch.manual_seed(seed)
    texts = calibration_sample(expert_set.calibration, cfg.calibration.max_samples, seed)
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
                                cfg.calibration.bf16, cfg.calibration.mask_padding, r.bias),
            training=RouterTrainingConfig(**btx_kwargs), seed=seed, progress=cfg.progress,
            stats_store=StatisticsStore() if cfg.calibration.store_statistics else None, parent=parent,
            base=expert_set.base, vocab=cfg.experts.vocab, tokenizer=tok,
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


# Config entries that do not change a run's numbers (left out of its cell key).
PRESENTATION_KEYS = ("results_dir", "progress", "logger", "title", "resume", "write_table", "save_models")
# Fields added after results cells were committed, with their defaults: left out of the cell key while they hold
# these values, so every configuration from before them keeps its key (and its committed cell).
KEY_NEUTRAL_DEFAULTS = {"calibration.text": "prompt_answer", "calibration.mask_padding": True, "experts.vocab": "align",
                        "router.bias": True, "eval.unsafe_code": False}


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


def drop_neutral_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (a resolved config container, changed in place) without the :data:`KEY_NEUTRAL_DEFAULTS` entries
    that hold their default."""
    for dotted, default in KEY_NEUTRAL_DEFAULTS.items():
        *parents, leaf = dotted.split(".")
        node = functools.reduce(lambda d, k: d.get(k, {}), parents, config)
        if leaf in node and node[leaf] == default:
            del node[leaf]
    return config


def cell_path(cfg: DictConfig) -> Path:
    """Where the results of this exact configuration are kept, keyed by the hash of what determines them
    (the configuration without its presentation keys and key-neutral defaults, and :func:`code_versions`)."""
    resolved = drop_neutral_defaults(OmegaConf.to_container(cfg, resolve=True))
    config = {k: v for k, v in resolved.items() if k not in PRESENTATION_KEYS}
    key = recipe_key({"config": config, "code": code_versions()}, length=20)
    return Path(cfg.results_dir) / cfg.experiment / "cells" / f"{key}.json"


def calibration_record(cal: DictConfig) -> dict[str, Any]:
    """``results["calibration"]``: what the tables say about the router data."""
    return {"split": cal.split, "max_samples": cal.max_samples, "eval_split_leak": cal.split == "test",
            "text": cal.text, "mask_padding": cal.mask_padding}


def publish(cfg: DictConfig, results: dict[str, Any], run_dir: Path, track: Tracker | None = None) -> None:
    """Write the results, table and routing figure into the run folder and the cell; with ``write_table`` also
    ``results/<experiment>/table.*``, ``results/figures/<experiment>_routing_dume.png`` and the zoo matrix."""
    from .figures import routing_figure

    write_checked_json(run_dir / "results.json", results)
    write_checked_json(cell_path(cfg), results)
    write_report(results, run_dir)
    figure = routing_figure(results, run_dir / "routing_dume.png")
    if figure is not None and track is not None:
        track.log_image("figures/routing_dume", figure)
    if cfg.write_table:
        publish_tables(results, Path(cfg.results_dir) / cfg.experiment, Path(cfg.results_dir) / "figures")


def record_retention(rows: list[dict[str, Any]], cols: list[str], model_dirs: list[Path]) -> None:
    """Write each saved DUME model's retention row (mean over seeds, percent) into its config and model card."""
    for row in rows:
        for folder in (d / row["name"] for d in model_dirs):
            if (folder / "config.json").exists() and is_native_folder(folder):
                annotate_saved(folder, retention={c: round(row["retention"][c][0], 1) for c in cols})


def is_native_folder(folder: Path) -> bool:
    return json.loads((folder / "config.json").read_text()).get("model_type") in NATIVE_MODEL_TYPES


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run the experiment described by ``cfg``; write ``results.json`` in ``run_dir`` and the tables.

    With ``resume`` (default) a configuration whose cell already exists is not run again (this is what
    makes an interrupted multirun resumable: finished cells are skipped, missing ones computed), unless
    ``save_models`` asks for models (rebuilt; their scores come from the evaluation cache).
    """
    validate(cfg)
    cell = cell_path(cfg)
    results = read_cached_json(cell) if cfg.resume and not cfg.save_models else None
    if results is not None:
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
            "all_domains": expert_set.all_domains, "statistics_mode": cfg.router.statistics,
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
