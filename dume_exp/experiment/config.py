"""Structured-config schemas for the Hydra app, and :func:`check_config`, which holds a composed config to them.

OmegaConf rejects a misspelt key and, as the enumerated settings are :class:`~dume_exp.utils.schema.Choice` types,
a value outside their choices, both at compose time. It accepts any key added with ``+`` and any number in a range
field; :func:`check_config` closes both gaps (the fields' ``checked`` ranges) before any work starts.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional, get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from ..evaluation.tasks.protocol import PROTOCOLS
from ..method.upcycle import VOCAB_MODES
from ..strategies.base import RouterConfig
from ..strategies.router_training import RouterTrainingConfig
from ..utils.data_layout import SPLITS
from ..utils.hardware import native_bf16, pick_device
from ..utils.schema import Choice, at_least, checked, choice_enum, each_at_least
from ..zoo.build import SETTINGS
from ..zoo.train import TrainConfig

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # the Hydra config tree, shipped as package data
# Config groups renamed since results cells were first keyed: old name -> new name (the old name keys the cells).
RENAMED_GROUPS = {"btx": "router_training"}

Setting = choice_enum("Setting", SETTINGS, __name__)  # the zoo setting
VocabMode = choice_enum("VocabMode", VOCAB_MODES, __name__)
EvalProtocol = choice_enum("EvalProtocol", PROTOCOLS, __name__)
Split = choice_enum("Split", SPLITS, __name__)  # the data layout's <data_dir>/<domain>/<split> files


class Source(Choice):
    zoo = "zoo"  # the embedded zoo of experts.setting
    pretrained = "pretrained"  # experts.models: hub ids or local folders


class Dtype(Choice):
    """The torch floating dtypes the experts load in."""

    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"
    float64 = "float64"


class EvalSuite(Choice):
    zoo_clm = "zoo_clm"
    zoo_reasoning = "zoo_reasoning"
    paper_reasoning = "paper_reasoning"


class CalibrationText(Choice):
    prompt_answer = "prompt_answer"  # a row's whole text
    prompt = "prompt"  # its question/prompt only


class EvalBackend(Choice):
    inmemory = "inmemory"  # lm-eval on the candidate in this process
    hf = "hf"  # lm-eval on the saved folder in eval.processes processes launched by torchrun (one per device)
    vllm = "vllm"  # lm-eval's vLLM model on the candidate exported to a stock class, after the parity gate (GPU)


class LoggerKind(Choice):
    wandb = "wandb"
    none = "none"


def seed_list(value: Any) -> str | None:
    return None if value is None or len(value) else "a non-empty list (e.g. [0,1,2]), or null for one run with `seed`"


@dataclass
class ExpertsConfig:
    """Where the experts come from: the embedded zoo, or hub ids / local folders (``models``)."""

    source: Source = Source.zoo
    setting: Setting = Setting.reasoning  # the zoo setting when source=zoo
    domains: list[str] = field(default_factory=list)
    subset: Optional[list[str]] = None  # run on these domains' experts only (expert-count sweeps)
    models: dict[str, str] = field(default_factory=dict)  # domain -> hub id or folder, source=pretrained
    base: Optional[str] = None  # the experts' common base model (strategy base_model); the zoo sets it
    tokenizer: Optional[str] = None  # defaults to the first expert's
    data_dir: Optional[str] = None  # calibration/evaluation data in the zoo layout; the zoo sets it
    dtype: Dtype = Dtype.float32
    # experts whose vocabulary row counts differ: align (merge the shared rows) | strict (refuse)
    vocab: VocabMode = VocabMode.align


@dataclass
class VllmConfig:
    """``eval.backend=vllm``: the export, the engine and its parity gate (:mod:`~dume_exp.experiment.vllm_scoring`)."""

    arch: Optional[str] = None  # stock class of a DUME model's export; null: the one that takes its experts
    dtype: str = "auto"  # vLLM's dtype (auto: the exported checkpoint's)
    tensor_parallel_size: int = checked(at_least(1), default=1)
    gpu_memory_utilization: float = 0.8
    max_model_len: Optional[int] = checked(at_least(2), default=None)
    parity_sequences: int = checked(at_least(1), default=2)  # per domain, from the seed's calibration texts
    parity_tokens: int = checked(at_least(2), default=128)  # at most, per sequence
    parity_top_k: int = checked(at_least(1), default=5)
    parity_tolerance: float = 5e-2  # max |Δ log p| of the reference's top tokens at any position
    parity_max_disagreement: float = 0.01  # share of positions whose most likely next token may differ


@dataclass
class EvalConfig:
    suite: EvalSuite = EvalSuite.zoo_reasoning
    split: Split = Split.test
    batch_size: int = checked(at_least(1), default=8)
    limit: Optional[int] = checked(at_least(1), default=None)  # items per task (ARC: per language); None: all
    # per-domain overrides of limit, e.g. {math: 100}
    domain_limit: dict[str, int] = checked(each_at_least(1), default_factory=dict)
    protocol: EvalProtocol = EvalProtocol.harness
    apply_chat_template: Optional[bool] = None
    max_gen_toks: Optional[int] = checked(at_least(1), default=None)  # cap for every generation task (None: own)
    # per-domain caps, e.g. {instruction: 192}
    domain_max_gen_toks: dict[str, int] = checked(each_at_least(1), default_factory=dict)
    num_fewshot: int = checked(at_least(0), default=5)  # GSM8K-schema few-shot examples
    math_sets: list[str] = field(default_factory=lambda: ["gsm8k"])  # <data>/math/<set>_test.jsonl
    coding_sets: list[str] = field(default_factory=lambda: ["humaneval"])  # <data>/coding/<set>_test.jsonl
    arc_languages: Optional[list[str]] = None  # default: every arc_<lang> file (zoo) / the okapi list (paper)
    bootstrap_iters: int = checked(at_least(0), default=0)
    # the evaluation's own seed (few-shot draws, sampling), the same for every run seed so that seeds vary what is
    # built, not what it is scored on (paired comparisons); null: each run seed
    seed: Optional[int] = 0
    bf16: Optional[bool] = None  # evaluate fp32 models in bf16; null: where the hardware has native bf16
    cache: bool = True  # reuse a score when weights, routing, tasks, data and eval knobs are unchanged
    # execute model-written code (HumanEval) even where bubblewrap cannot isolate it (tables mark such scores)
    unsafe_code: bool = False
    backend: EvalBackend = EvalBackend.inmemory
    processes: int = checked(at_least(1), default=1)  # eval.backend=hf: data-parallel processes (GPUs)
    vllm: VllmConfig = field(default_factory=VllmConfig)


@dataclass
class CalibrationConfig:
    split: Split = Split.train  # test needs allow_eval_split
    allow_eval_split: bool = False
    max_samples: int = checked(at_least(1), default=2048)
    batch_size: int = checked(at_least(1), default=8)
    store_statistics: bool = True  # reuse router statistics from <cache>/statistics (keyed by content)
    # only put these domains' router statistics (every seed) into the store, then stop: one job per domain, then
    # the run itself loads them (nothing is built or scored)
    collect_only: list[str] = field(default_factory=list)
    bf16: Optional[bool] = False  # statistics passes under bf16 autocast (float64 sums); null: if native
    # prompt_answer: each row's whole text | prompt: its question/prompt only (a chat transcript up to and including
    # the first assistant header); for router statistics and BTX/DUME+ training alike
    text: CalibrationText = CalibrationText.prompt_answer
    mask_padding: bool = True  # false: the padding positions of each calibration batch enter the router statistics


@dataclass
class LoggerConfig:
    kind: LoggerKind = LoggerKind.wandb
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
    device: str = "auto"  # where experts, candidates, statistics, router training and evaluation run (utils.hardware)
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
    router: RouterConfig = field(default_factory=RouterConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    router_training: RouterTrainingConfig = field(default_factory=RouterTrainingConfig)  # BTX and DUME+
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    zoo: ZooConfig = field(default_factory=ZooConfig)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    for group, node in (("experts", ExpertsConfig), ("eval", EvalConfig), ("router", RouterConfig),
                        ("calibration", CalibrationConfig), ("logger", LoggerConfig)):
        cs.store(group=group, name="schema", node=node)


def check_config(cfg: Mapping[str, Any], schema: type = Config, prefix: str = "") -> None:
    """Raise ``ValueError`` for a key that ``schema`` lacks (Hydra's ``+key=value`` adds any key) or a value its
    field's check refuses, naming the key and the valid keys (the new name of a renamed group) or values; nested
    schemas are checked in turn."""
    hints = get_type_hints(schema)
    known = {f.name: f for f in fields(schema)}
    for key in cfg:
        path = f"{prefix}{key}"
        if not prefix and key in RENAMED_GROUPS:
            new = RENAMED_GROUPS[key]
            keys = list(cfg[key]) if isinstance(cfg[key], Mapping) else ["<key>"]
            raise ValueError(f"The config group {key!r} is now {new!r}; use "
                             f"{', '.join(f'{new}.{k}' for k in keys)} instead of {', '.join(f'{key}.{k}' for k in keys)}.")
        if key not in known:
            group = f"of {prefix[:-1]}" if prefix else "at the top level"
            raise ValueError(f"Unknown config key {path!r} (a typo, or a key added with `+` that the schema lacks); "
                             f"valid keys {group}: {sorted(known)}.")
        value = cfg[key]
        if is_dataclass(hints[key]):
            check_config(value, hints[key], f"{path}.")
        elif "check" in known[key].metadata and (must := known[key].metadata["check"](value)) is not None:
            raise ValueError(f"{path} must be {must}; got {value!r}.")


AUTO_BF16 = ("eval.bf16", "calibration.bf16", "router_training.bf16")  # null: bf16 only with native hardware support


def resolve_auto_precision(cfg: Any) -> None:
    """Replace ``device=auto`` (and ``zoo.device=auto``) by the device this machine gives and each null switch of
    :data:`AUTO_BF16` in ``cfg`` by that device's decision (:mod:`~dume_exp.utils.hardware`), so that what a run
    records and keys is the device and precision it used."""
    device = pick_device(OmegaConf.select(cfg, "device", default="auto"))
    OmegaConf.update(cfg, "device", str(device))
    OmegaConf.update(cfg, "zoo.device", str(pick_device(OmegaConf.select(cfg, "zoo.device", default="auto"))))
    for key in AUTO_BF16:
        if OmegaConf.select(cfg, key) is None:
            OmegaConf.update(cfg, key, native_bf16(device))
