"""Structured-config schemas for the Hydra app: a misspelt key fails at start-up."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from .router_training import RouterTrainingConfig
from .zoo.train import TrainConfig


@dataclass
class ExpertsConfig:
    """Where the experts come from: the embedded zoo, or hub ids / local folders (``models``)."""

    source: str = "zoo"  # zoo | pretrained
    setting: str = "reasoning"  # the zoo setting (clm | reasoning) when source=zoo
    domains: list[str] = field(default_factory=list)
    subset: Optional[list[str]] = None  # run on these domains' experts only (expert-count sweeps)
    models: dict[str, str] = field(default_factory=dict)  # domain -> hub id or folder, source=pretrained
    base: Optional[str] = None  # the experts' common base model (strategy base_model); the zoo sets it
    tokenizer: Optional[str] = None  # defaults to the first expert's
    data_dir: Optional[str] = None  # calibration/evaluation data in the zoo layout; the zoo sets it
    dtype: str = "float32"
    vocab: str = "align"  # experts whose vocabulary row counts differ: align (merge the shared rows) | strict (refuse)


@dataclass
class EvalConfig:
    suite: str = "zoo_reasoning"  # zoo_clm | zoo_reasoning | paper_reasoning
    split: str = "test"
    batch_size: int = 8
    limit: Optional[int] = None  # items per task (ARC: per language); None: all
    domain_limit: dict[str, int] = field(default_factory=dict)  # per-domain overrides of limit, e.g. {math: 100}
    protocol: str = "harness"  # harness | reference
    apply_chat_template: Optional[bool] = None
    max_gen_toks: Optional[int] = None  # cap for every generation task (None: each task's own)
    domain_max_gen_toks: dict[str, int] = field(default_factory=dict)  # per-domain caps, e.g. {instruction: 192}
    num_fewshot: int = 5  # GSM8K-schema few-shot examples
    math_sets: list[str] = field(default_factory=lambda: ["gsm8k"])  # <data>/math/<set>_test.jsonl
    coding_sets: list[str] = field(default_factory=lambda: ["humaneval"])  # <data>/coding/<set>_test.jsonl
    arc_languages: Optional[list[str]] = None  # default: every arc_<lang> file (zoo) / the okapi list (paper)
    bootstrap_iters: int = 0
    bf16: bool = True  # evaluate fp32 models in bf16 (faster on CPUs with native bf16)
    cache: bool = True  # reuse a score when weights, routing, tasks, data and eval knobs are unchanged


@dataclass
class RouterConf:
    top_k: int = 1
    temperature: float = 1.0
    lam: Any = 1.0e-2  # a float ≥ 0
    normalize: bool = True
    max_tokens_per_sequence: int = 1024
    bias: bool = True  # false: ridge routers without the constant feature (bias zero)
    statistics: str = "exact"  # with experts.subset: exact (recollect under the subset's backbone) | fast (reuse)


@dataclass
class CalibrationConfig:
    split: str = "train"  # train | validation | test (test needs allow_eval_split)
    allow_eval_split: bool = False
    max_samples: int = 2048
    batch_size: int = 8
    store_statistics: bool = True  # reuse router statistics from <cache>/statistics (keyed by content)
    bf16: bool = False  # statistics passes under bf16 autocast (accumulation stays float64)
    # prompt_answer: each row's whole text | prompt: its question/prompt only (a chat transcript up to and including
    # the first assistant header); for router statistics and BTX/DUME+ training alike
    text: str = "prompt_answer"
    mask_padding: bool = True  # false: the padding positions of each calibration batch enter the router statistics


@dataclass
class BtxConfig(RouterTrainingConfig):
    batch_size: int = 8
    seq_len: int = 512


@dataclass
class LoggerConfig:
    kind: str = "wandb"  # wandb | none
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
    seeds: Optional[list[int]] = None  # repeats; mean ± std in the table
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
