"""``eval.backend=vllm``: a candidate scored by lm-eval's vLLM model on its export to a stock class, accepted only after
the parity gate.

Per candidate: the model is written as a folder vLLM loads (a dense model as it is, a DUME model through
:func:`~dume_exp.export.export_moe`), one engine is started on it, the gate compares the engine's prompt
log-probabilities with the in-memory model's on fixed calibration sequences
(:func:`~dume_exp.export.parity.check_parity`), and only then are the domains scored, through lm-eval, by that same
engine. Engines are opened through :data:`ENGINES` (vLLM needs a GPU; the app refuses the backend before any model is
loaded where vLLM is not installed).
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from ..export import ARCHITECTURES, ExportError, export_moe
from ..export.parity import ParityReport, PromptLogprobEngine, VllmEngine, check_parity
from ..native import is_native, save_model

log = logging.getLogger(__name__)


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def open_vllm(folder: Path, cfg: DictConfig, seed: int) -> tuple[Any, PromptLogprobEngine]:
    """lm-eval's vLLM model on ``folder`` and the parity engine on the same ``vllm.LLM`` (one engine in memory)."""
    from lm_eval.models.vllm_causallms import VLLM

    v = cfg.eval.vllm
    lm = VLLM(pretrained=str(folder), dtype=v.dtype, batch_size=cfg.eval.batch_size, seed=seed,
              tensor_parallel_size=v.tensor_parallel_size, gpu_memory_utilization=v.gpu_memory_utilization,
              max_model_len=v.max_model_len)
    return lm, VllmEngine.from_llm(lm.model)


# Opens ``(lm-eval LM, parity engine)`` on a servable folder; the name is ``eval.backend``.
ENGINES: dict[str, Callable[[Path, DictConfig, int], tuple[Any, PromptLogprobEngine]]] = {"vllm": open_vllm}


def export_arch(model: torch.nn.Module, arch: str | None) -> str:
    """The stock class a DUME model is exported to: ``arch``, or the one that takes its experts' architecture."""
    if arch is not None:
        return arch
    source = model.config.stock_model_type
    fits = [name for name, a in ARCHITECTURES.items() if source in a.sources]
    if not fits:
        raise ExportError(f"No stock MoE class takes {source} experts, so vLLM cannot serve this DUME model; score it "
                          "with eval.backend=inmemory or eval.backend=hf.")
    return fits[0]


def write_servable(model: torch.nn.Module, tokenizer: Any, folder: Path, arch: str | None) -> Path:
    """``model`` as a folder that vLLM loads with no DUME code: a DUME model exported to a stock MoE class (refused,
    with the way out, when that class cannot represent it exactly), any other model saved as it is."""
    if is_native(model):
        return export_moe(model, folder, export_arch(model, arch), tokenizer=tokenizer)
    return save_model(model, tokenizer, folder)


def parity_sequences(tokenizer: Any, texts: Mapping[str, Sequence[str]], per_domain: int,
                     max_tokens: int) -> list[list[int]]:
    """The gate's calibration sequences: the first ``per_domain`` texts of each domain, as at most ``max_tokens``
    token ids (texts of one token or less are skipped: they have no next token to compare)."""
    sequences = []
    for domain, rows in texts.items():
        ids = [tokenizer(t, add_special_tokens=True)["input_ids"][:max_tokens] for t in rows]
        ids = [s for s in ids if len(s) >= 2][:per_domain]
        if not ids:
            raise ValueError(f"No calibration text of domain {domain!r} has two tokens or more; the parity gate "
                             "needs sequences with a next token to compare.")
        sequences.extend(ids)
    return sequences


@contextlib.contextmanager
def served(model: torch.nn.Module, tokenizer: Any, folder: Path, cfg: DictConfig, sequences: Sequence[Sequence[int]],
           seed: int) -> Iterator[tuple[Any, ParityReport]]:
    """An lm-eval LM serving ``model`` on the engine ``cfg.eval.backend``, once it passed the parity gate against
    ``model`` itself (:class:`~dume_exp.export.parity.ParityError` otherwise, before anything is scored)."""
    v = cfg.eval.vllm
    write_servable(model, tokenizer, folder, v.arch)
    lm, engine = ENGINES[str(cfg.eval.backend)](folder, cfg, seed)
    report = check_parity(model, engine, sequences, top_k=v.parity_top_k, tolerance=v.parity_tolerance,
                          max_disagreement=v.parity_max_disagreement)
    log.info("%s", report)
    yield lm, report
