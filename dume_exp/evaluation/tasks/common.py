"""Helpers shared by the task builders: load lm-eval's shipped task YAMLs and re-point their data."""
from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lm_eval.tasks

LM_EVAL_TASKS = Path(lm_eval.tasks.__file__).parent
RAW_PROMPT = "dume_raw_prompt"  # metadata key: the doc's raw question template (reference protocol)


def shipped_config(relpath: str, *, resolve_functions: bool = True) -> dict[str, Any]:
    """The config dict of one task YAML shipped with lm-eval (``include:`` resolved, tags dropped).

    With ``resolve_functions=False`` the ``!function`` entries stay as path strings, for configs
    whose helper modules cannot be imported offline (they must then be replaced by the caller).
    """
    from lm_eval.tasks._yaml_loader import load_yaml

    path = LM_EVAL_TASKS / relpath
    if not path.is_file():
        raise FileNotFoundError(f"lm-eval {lm_eval.__version__} ships no task file {path}; check the lm-eval version.")
    cfg = dict(load_yaml(path, resolve_func=resolve_functions))
    cfg.pop("tag", None)
    return cfg


@functools.lru_cache(maxsize=None)
def _shipped_template(relpath: str, key: str) -> str:
    return shipped_config(relpath, resolve_functions=False)[key]


def render_shipped(relpath: str, key: str, doc: Mapping[str, Any]) -> str:
    """Template ``key`` (e.g. ``doc_to_text``) of a shipped task YAML rendered for ``doc``, as lm-eval renders it
    (the zoo tunes its experts on these exact prompts). The YAML is read once per template."""
    from lm_eval.utils import apply_template

    return apply_template(_shipped_template(relpath, key), dict(doc))


def require_file(path: str | Path) -> Path:
    """Absolute ``path``; a clear error if it is missing."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(
            f"Evaluation data file {path} does not exist. Build the evaluation data first "
            "(dume_exp.zoo) or point the suite at the folder that holds it.")
    return path


def local_data(cfg: Mapping[str, Any], name: str, files: Mapping[str, str | Path], **overrides: Any) -> dict[str, Any]:
    """``cfg`` renamed to ``name`` and reading local JSONL files (``split -> path``), schema unchanged.

    The test split is ``"test"``; a ``"train"`` file, when given, is also the few-shot source.
    Splits the local data lacks are unset so lm-eval never asks for them.
    """
    data_files = {split: str(require_file(path)) for split, path in files.items()}
    has_train = "train" in data_files
    out = dict(cfg)
    out.update(task=name, dataset_path="json", dataset_name=None, dataset_kwargs={"data_files": data_files},
               test_split="test", validation_split=None, training_split="train" if has_train else None,
               fewshot_split="train" if has_train else None)
    out.update(overrides)
    return out


def with_raw_prompt(cfg: Mapping[str, Any], template: str) -> dict[str, Any]:
    """``cfg`` annotated with the template of its raw question text (used by the reference protocol)."""
    return {**cfg, "metadata": {**(cfg.get("metadata") or {}), RAW_PROMPT: template}}


def with_max_gen_toks(cfg: Mapping[str, Any], max_gen_toks: int | None) -> dict[str, Any]:
    """``cfg`` with its generation budget set (``None``: the task's own default)."""
    if max_gen_toks is None or cfg.get("output_type") != "generate_until":
        return dict(cfg)
    return {**cfg, "generation_kwargs": {**(cfg.get("generation_kwargs") or {}), "max_gen_toks": max_gen_toks}}
