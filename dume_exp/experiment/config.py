"""Structured-config schemas for the Hydra app, and :func:`check_config`, which holds a composed config to them.

Hydra rejects a misspelt key, but accepts any key added with ``+`` and any string in a switch; the fields' checks
(``checked``) and :func:`check_config` close both gaps before any work starts.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional, get_type_hints

from hydra.core.config_store import ConfigStore

from ..strategies.router_training import RouterTrainingConfig
from ..evaluation.tasks.protocol import PROTOCOLS
from ..method.upcycle import VOCAB_MODES
from ..zoo.build import SETTINGS
from ..zoo.train import TrainConfig

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # the Hydra config tree, shipped as package data
Check = Callable[[Any], Optional[str]]  # None: the value is valid; else what it must be
SPLITS = ("train", "validation", "test")  # the data layout's <data_dir>/<domain>/<split> files
CALIBRATION_TEXTS = ("prompt_answer", "prompt")  # calibration.text: a row's whole text | its question/prompt only
DTYPES = ("float32", "bfloat16", "float16", "float64")  # torch floating dtypes the experts load in


def checked(check: Check, **field_kwargs: Any) -> Any:
    """A schema field whose value :func:`check_config` tests with ``check`` (OmegaConf ignores the metadata)."""
    return field(metadata={"check": check}, **field_kwargs)


def one_of(*choices: str) -> Check:
    return lambda value: None if value in choices else f"one of {list(choices)}"


def at_least(low: int) -> Check:
    """≥ ``low``; ``None`` (the field's "unset") passes."""
    return lambda value: None if value is None or value >= low else f"≥ {low}"


def each_at_least(low: int) -> Check:
    """A mapping whose every value is ≥ ``low``."""
    return lambda value: None if all(v >= low for v in value.values()) else f"a mapping with every value ≥ {low}"


def positive_finite(value: float) -> str | None:
    return None if math.isfinite(value) and value > 0 else "a finite number > 0"


def seed_list(value: Any) -> str | None:
    return None if value is None or len(value) else "a non-empty list (e.g. [0,1,2]), or null for one run with `seed`"


@dataclass
class ExpertsConfig:
    """Where the experts come from: the embedded zoo, or hub ids / local folders (``models``)."""

    source: str = checked(one_of("zoo", "pretrained"), default="zoo")
    setting: str = checked(one_of(*SETTINGS), default="reasoning")  # the zoo setting when source=zoo
    domains: list[str] = field(default_factory=list)
    subset: Optional[list[str]] = None  # run on these domains' experts only (expert-count sweeps)
    models: dict[str, str] = field(default_factory=dict)  # domain -> hub id or folder, source=pretrained
    base: Optional[str] = None  # the experts' common base model (strategy base_model); the zoo sets it
    tokenizer: Optional[str] = None  # defaults to the first expert's
    data_dir: Optional[str] = None  # calibration/evaluation data in the zoo layout; the zoo sets it
    dtype: str = checked(one_of(*DTYPES), default="float32")
    # experts whose vocabulary row counts differ: align (merge the shared rows) | strict (refuse)
    vocab: str = checked(one_of(*VOCAB_MODES), default="align")


@dataclass
class EvalConfig:
    suite: str = checked(one_of("zoo_clm", "zoo_reasoning", "paper_reasoning"), default="zoo_reasoning")
    split: str = checked(one_of(*SPLITS), default="test")
    batch_size: int = checked(at_least(1), default=8)
    limit: Optional[int] = checked(at_least(1), default=None)  # items per task (ARC: per language); None: all
    # per-domain overrides of limit, e.g. {math: 100}
    domain_limit: dict[str, int] = checked(each_at_least(1), default_factory=dict)
    protocol: str = checked(one_of(*PROTOCOLS), default="harness")
    apply_chat_template: Optional[bool] = None
    max_gen_toks: Optional[int] = checked(at_least(1), default=None)  # cap for every generation task (None: own)
    # per-domain caps, e.g. {instruction: 192}
    domain_max_gen_toks: dict[str, int] = checked(each_at_least(1), default_factory=dict)
    num_fewshot: int = checked(at_least(0), default=5)  # GSM8K-schema few-shot examples
    math_sets: list[str] = field(default_factory=lambda: ["gsm8k"])  # <data>/math/<set>_test.jsonl
    coding_sets: list[str] = field(default_factory=lambda: ["humaneval"])  # <data>/coding/<set>_test.jsonl
    arc_languages: Optional[list[str]] = None  # default: every arc_<lang> file (zoo) / the okapi list (paper)
    bootstrap_iters: int = checked(at_least(0), default=0)
    bf16: bool = True  # evaluate fp32 models in bf16 (faster on CPUs with native bf16)
    cache: bool = True  # reuse a score when weights, routing, tasks, data and eval knobs are unchanged
    # execute model-written code (HumanEval) even where bubblewrap cannot isolate it (tables mark such scores)
    unsafe_code: bool = False


@dataclass
class RouterConf:
    top_k: int = checked(at_least(1), default=1)
    temperature: float = checked(positive_finite, default=1.0)
    lam: Any = 1.0e-2  # a float ≥ 0
    normalize: bool = True
    max_tokens_per_sequence: int = checked(at_least(1), default=1024)
    bias: bool = True  # false: ridge routers without the constant feature (bias zero)
    # with experts.subset: exact (recollect under the subset's backbone) | fast (reuse the full set's)
    statistics: str = checked(one_of("exact", "fast"), default="exact")


@dataclass
class CalibrationConfig:
    split: str = checked(one_of(*SPLITS), default="train")  # test needs allow_eval_split
    allow_eval_split: bool = False
    max_samples: int = checked(at_least(1), default=2048)
    batch_size: int = checked(at_least(1), default=8)
    store_statistics: bool = True  # reuse router statistics from <cache>/statistics (keyed by content)
    bf16: bool = False  # statistics passes under bf16 autocast (accumulation stays float64)
    # prompt_answer: each row's whole text | prompt: its question/prompt only (a chat transcript up to and including
    # the first assistant header); for router statistics and BTX/DUME+ training alike
    text: str = checked(one_of(*CALIBRATION_TEXTS), default="prompt_answer")
    mask_padding: bool = True  # false: the padding positions of each calibration batch enter the router statistics


@dataclass
class BtxConfig(RouterTrainingConfig):
    batch_size: int = checked(at_least(1), default=8)
    seq_len: int = checked(at_least(1), default=512)


@dataclass
class LoggerConfig:
    kind: str = checked(one_of("wandb", "none"), default="wandb")
    project: str = "dume_exp"


@dataclass
class ZooConfig(TrainConfig):
    """The embedded zoo: the base model spec plus the expert fine-tuning hyperparameters."""

    base: str = "smollm2-135m-instruct-gguf"  # or a hub id (HuggingFaceTB/SmolLM2-135M) or a local folder


@dataclass
class Config:
    experiment: str = "reasoning"
    title: str = ""
    seed: int = 0
    seeds: Optional[list[int]] = checked(seed_list, default=None)  # repeats; mean ± std in the table
    results_dir: str = "results"
    progress: bool = True
    resume: bool = True  # skip a configuration whose results cell already exists
    write_table: bool = True  # update <results_dir>/<experiment>/table.md
    strategy: dict[str, bool] = field(default_factory=dict)
    # strategies whose models are saved (native DUME folders, tokenizer, model card) under <run dir>/models/<name>
    save_models: list[str] = field(default_factory=list)
    experts: ExpertsConfig = field(default_factory=ExpertsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    router: RouterConf = field(default_factory=RouterConf)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    btx: BtxConfig = field(default_factory=BtxConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    zoo: ZooConfig = field(default_factory=ZooConfig)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    for group, node in (("experts", ExpertsConfig), ("eval", EvalConfig), ("router", RouterConf),
                        ("calibration", CalibrationConfig), ("logger", LoggerConfig)):
        cs.store(group=group, name="schema", node=node)


def check_config(cfg: Mapping[str, Any], schema: type = Config, prefix: str = "") -> None:
    """Raise ``ValueError`` for a key that ``schema`` lacks (Hydra's ``+key=value`` adds any key) or a value its
    field's check refuses, naming the key and the valid keys or values; nested schemas are checked in turn."""
    hints = get_type_hints(schema)
    known = {f.name: f for f in fields(schema)}
    for key in cfg:
        path = f"{prefix}{key}"
        if key not in known:
            group = f"of {prefix[:-1]}" if prefix else "at the top level"
            raise ValueError(f"Unknown config key {path!r} (a typo, or a key added with `+` that the schema lacks); "
                             f"valid keys {group}: {sorted(known)}.")
        value = cfg[key]
        if is_dataclass(hints[key]):
            check_config(value, hints[key], f"{path}.")
        elif "check" in known[key].metadata and (must := known[key].metadata["check"](value)) is not None:
            raise ValueError(f"{path} must be {must}; got {value!r}.")
