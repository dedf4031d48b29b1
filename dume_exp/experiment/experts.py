"""The expert set of a run: the embedded zoo's or given models, their tokenizer, data folder and calibration texts."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from ..utils.integrity import check_finite_parameters
from .calibration import calibration_texts


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
    dtype = getattr(torch, str(ec.dtype))
    if ec.source == "zoo":
        from ..zoo.build import ensure_zoo

        zoo = ensure_zoo(str(ec.setting), cfg.zoo, progress=cfg.progress)
        paths = {d: zoo.experts[d] for d in ec.domains}
        data_dir, nltk_data, provenance, base = zoo.data_dir, zoo.nltk_data, zoo.manifest, str(zoo.base)
    else:  # pretrained: check_config admits no other source
        paths = pretrained_paths(ec)
        data_dir, nltk_data, provenance, base = Path(ec.data_dir), None, {"models": dict(paths)}, ec.base
    tokenizer = AutoTokenizer.from_pretrained(str(ec.tokenizer or paths[ec.domains[0]]))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = calibration_texts(cfg, Path(data_dir), list(ec.domains), tokenizer)  # bad data fails before the models load
    experts = [AutoModelForCausalLM.from_pretrained(str(paths[d]), dtype=dtype).to(cfg.device).eval()
               for d in ec.domains]
    for d, model in zip(ec.domains, experts):  # once, at load: a NaN would otherwise surface as NaN routers
        check_finite_parameters(model, f"expert {d!r} ({paths[d]})")
    active = list(ec.subset) if ec.subset else list(ec.domains)
    return ExpertSet(experts, list(ec.domains), active, tokenizer, Path(data_dir), nltk_data, provenance, texts, base)

