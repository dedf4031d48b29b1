"""Scoring a candidate on every domain of the suite, each domain's score cached under its evaluation key."""
from __future__ import annotations

import contextlib
import copy
import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from ..evaluation import EvalResult, Suite, clm_suite, evaluate, paper_reasoning_suite, reasoning_suite, run_suite
from ..export.parity import ParityReport
from ..method.moe import moe_blocks, reset_routing_counts, routing_counts
from ..native import save_model
from ..strategies import Candidate
from ..utils.fingerprints import tensor_fingerprint
from ..utils.hardware import use_bf16
from ..utils.cache import cache_root, file_sha256, read_cached_json, recipe_key, write_checked_json
from .experts import ExpertSet
from .score_worker import write_spec
from .validate import sandbox_limits
from .vllm_scoring import served


def build_suite(cfg: DictConfig, expert_set: ExpertSet) -> Suite:
    ev = cfg.eval
    common = dict(max_gen_toks=ev.max_gen_toks, protocol=str(ev.protocol), nltk_data=expert_set.nltk_data,
                  num_fewshot=ev.num_fewshot, domains=expert_set.domains, sandbox=sandbox_limits(cfg))
    langs = list(ev.arc_languages) if ev.arc_languages else None
    if ev.suite == "zoo_clm":
        suite = clm_suite(expert_set.data_dir, expert_set.domains, split=str(ev.split))
    elif ev.suite == "zoo_reasoning":
        suite = reasoning_suite(expert_set.data_dir, math_sets=list(ev.math_sets), coding_sets=list(ev.coding_sets),
                                arc_languages=langs, **common)
    else:  # paper_reasoning: the schema admits no other suite
        suite = paper_reasoning_suite(**({"arc_languages": langs} if langs else {}), **common)
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
    if launched(cfg, cand):  # another engine and batching: its own key (in-memory keys stay as they were)
        ev.update(backend=str(cfg.eval.backend), processes=cfg.eval.processes)
        if cfg.eval.backend == "vllm":
            ev["vllm"] = {k: cfg.eval.vllm[k] for k in ("arch", "dtype", "tensor_parallel_size", "max_model_len")}
    return recipe_key({"model": model_fingerprint, "candidate": cand.name, "domain_routing": cand.domain_routing,
                       "domain": domain, "tasks": content_keyed(list(tasks)),
                       "eval": ev, "seed": seed, "routing": [(b.top_k, b.temperature) for b in moe_blocks(model)]},
                      length=24)


def launched(cfg: DictConfig, cand: Candidate) -> bool:
    """Whether ``cand`` is scored outside this process's in-memory model (``eval.backend=hf``: a launched job;
    ``vllm``: an engine on its export); a candidate whose routing depends on the domain scored (oracle) is always
    scored in memory, where that rule is applied."""
    return cfg.eval.backend in ("hf", "vllm") and cand.domain_routing is None


def _in_memory_entry(model: torch.nn.Module, cand: Candidate, domain: str, suite: Suite, tokenizer: Any,
                     cfg: DictConfig, seed: int) -> dict[str, Any]:
    ev, has_moe = cfg.eval, bool(moe_blocks(model))
    if has_moe:
        reset_routing_counts(model)
    with cand.route_domain(model, domain):
        res: EvalResult = evaluate(model, tokenizer, suite.select([domain]), batch_size=ev.batch_size,
                                   limit=domain_limit(cfg, domain), bootstrap_iters=ev.bootstrap_iters, seed=seed,
                                   apply_chat_template=ev.apply_chat_template)
    s = res.domains[domain]
    return {"score": s.score, "stderr": s.stderr, "n": s.n, "items": s.items, "wall_s": res.wall_s,
            "routing_counts": routing_counts(model).tolist() if has_moe else None}


def _launched_entry(folder: Path, domain: str, suite: Suite, cfg: DictConfig, seed: int) -> dict[str, Any]:
    """One domain's score from ``eval.processes`` processes started by torchrun on the saved ``folder``."""
    ev = cfg.eval
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        spec, out = Path(tmp) / "spec.pkl", Path(tmp) / "result.json"
        write_spec(spec, folder, suite.select([domain]), batch_size=ev.batch_size, limit=domain_limit(cfg, domain),
                   bootstrap_iters=ev.bootstrap_iters, seed=seed, apply_chat_template=ev.apply_chat_template)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ev.processes),
               "-m", "dume_exp.experiment.score_worker", str(spec), str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"eval.backend=hf: the scoring job for {domain!r} failed (exit {proc.returncode}):\n"
                               f"{proc.stderr[-3000:]}")
        res = json.loads(out.read_text())
    return {**res["domains"][domain], "wall_s": res["wall_s"], "routing_counts": res["routing_counts"],
            "processes": res["processes"]}


def _served_entry(lm: Any, report: ParityReport, domain: str, suite: Suite, cfg: DictConfig,
                  seed: int) -> dict[str, Any]:
    """One domain's score from an engine that passed the parity gate (no routing counts: the engine keeps none)."""
    ev = cfg.eval
    res = run_suite(lm, suite.select([domain]), limit=domain_limit(cfg, domain), bootstrap_iters=ev.bootstrap_iters,
                    seed=seed, apply_chat_template=ev.apply_chat_template)
    s = res.domains[domain]
    return {"score": s.score, "stderr": s.stderr, "n": s.n, "items": s.items, "wall_s": res.wall_s,
            "routing_counts": None, "parity": str(report)}


def evaluation_seed(cfg: DictConfig, seed: int) -> int:
    """The seed of the evaluation itself (few-shot draws, sampling): ``eval.seed``, or the run's ``seed`` when null."""
    return seed if cfg.eval.seed is None else cfg.eval.seed


def score_candidate(cand: Candidate, cfg: DictConfig, suite: Suite, tokenizer: Any, seed: int,
                    parity_sequences: Sequence[Sequence[int]] = ()) -> dict[str, Any]:
    """Score every domain (in memory, entering the candidate's routing context per domain, in a launched job on
    its saved folder, or by an engine on its export that passed the parity gate on ``parity_sequences``:
    :func:`launched`) and read routing counts and per-item outcomes.

    Scores are cached under :func:`evaluation_key` (``eval.cache``), so a dense expert or an unchanged
    candidate is evaluated once across runs, seeds (with a fixed ``eval.seed``) and sweep cells; an entry
    from before per-item outcomes were kept is scored again.
    """
    seed = evaluation_seed(cfg, seed)
    model = cand.model
    if use_bf16(cfg.eval.bf16, next(model.parameters()).device) and next(model.parameters()).dtype == torch.float32:
        model = copy.deepcopy(model).to(torch.bfloat16)  # never convert the shared experts in place
    scores, stderr, n, items, counts, wall, cached = {}, {}, {}, {}, {}, 0.0, []
    fingerprint = tensor_fingerprint(model.state_dict().values())  # hashing the weights once, not per domain
    with contextlib.ExitStack() as stack:
        folder, engine = None, None
        for domain in suite.domains:
            key = evaluation_key(fingerprint, model, cand, domain, suite, cfg, seed)
            key_file = cache_root() / "evaluations" / f"{key}.json"
            entry = read_cached_json(key_file) if cfg.eval.cache else None
            if entry is not None and entry.get("items") is None:
                entry = None
            if entry is not None:
                cached.append(domain)
            elif launched(cfg, cand):
                if folder is None:  # saved once per candidate, removed after it
                    cache_root().mkdir(parents=True, exist_ok=True)
                    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=cache_root(),
                                                                                  prefix="launch-"))) / "model"
                    if cfg.eval.backend == "vllm":  # one engine per candidate, gated before its first score
                        engine = stack.enter_context(served(model, tokenizer, folder, cfg, parity_sequences, seed))
                    else:
                        save_model(model, tokenizer, folder)
                entry = (_served_entry(*engine, domain, suite, cfg, seed) if engine is not None
                         else _launched_entry(folder, domain, suite, cfg, seed))
            else:
                entry = _in_memory_entry(model, cand, domain, suite, tokenizer, cfg, seed)
            if domain not in cached and cfg.eval.cache:
                write_checked_json(key_file, entry)
            scores[domain], stderr[domain], n[domain], items[domain] = (entry["score"], entry["stderr"], entry["n"],
                                                                        entry["items"])
            wall += entry["wall_s"]
            if entry["routing_counts"] is not None:
                counts[domain] = entry["routing_counts"]
    return {"name": cand.name, "scores": scores, "stderr": stderr, "n": n, "items": items, "eval_wall_s": wall,
            "eval_cached": cached, "cost": asdict(cand.cost), "info": cand.info, "routing_counts": counts}
