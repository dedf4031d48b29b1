"""The paper's causal-LM expert set: a Llama pretrained from scratch on OpenWebText, one expert per M2D2 domain.

Same code as the embedded zoo, other sizes and sources: :func:`~dume_exp.zoo.train.train_expert` runs every
training stage (pretraining starts it from a saved random init), every artifact is cached under a ``recipe_key`` and
written atomically, and the domain data lands in the zoo layout (``<dir>/<domain>/{train,validation,test}.jsonl``,
rows ``{"text"}``, ``manifest.json`` with each split's sha256) that ``experts.source=pretrained`` reads.

Sources, checked with the project's search tools (this machine cannot reach the hub):

- M2D2 (``machelreid/m2d2``, CC-BY-NC-4.0). The hub configs of the paper's five domains are ``cs_l1``, ``math_l1``,
  ``physics_l1`` (arXiv top-level categories, S2ORC side) and ``History_and_events``, ``Philosophy_and_thinking``
  (Wikipedia top-level categories). Verified: the reference code (gensyn-ai/dume: ``clm_train_experts.py``,
  ``utils/datasets_utils.py``) trains on exactly these five names; the hub history adds ``data/<name>.tar.gz`` for
  each; the repo's loading script ``m2d2.py`` reads ``<name>/{train,valid,test}.txt`` from that archive into the
  splits train/validation/test, one stripped line per row. Not verified: that the pinned revision is the live head,
  and the archive's member names beyond what the script implies. The repo is a loading-script dataset without a
  parquet export, which ``datasets`` >= 4 refuses to load, so :func:`hub_loader` reads the archives directly.
- OpenWebText (``Skylion007/openwebtext``, CC0): a single ``train`` split, streamed with ``datasets.load_dataset``.
  Not verified: whether the hub repo still ships its loading script (open parquet PR as of late 2025); if
  ``datasets`` refuses it, pass a ``loader`` that reads a parquet export or a local copy.
- Model: the reference's "1.15e8" Llama (``models/llama_experts.py``): hidden 768, 12 layers, 12 heads, MLP
  4 x 768 = 3072, untied embeddings, the Llama-3 tokenizer. Computed by :func:`parameter_counts` (meta device):
  113,265,408 parameters outside the embeddings, which is the "~115M"; the two 128,256 x 768 embedding matrices
  add 197,001,216, 310,266,624 in all. (The reference sizes the vocabulary 128,002, the BPE tokens plus BOS/EOS;
  here it is the tokenizer's full length, so text holding another special token's literal string cannot index past
  the table: 0.4M more parameters.)
- Training (reference ``clm_pretrain.py``, ``clm_train_experts.py``, ``utils/optimizer.py``): AdamW with torch's
  default weight decay 0.01, 64 sequences per optimizer step (16 x 4 gradient accumulation), cosine decay to
  0.1 x lr, clip 1.0, seed 42, bf16; pretraining 20,000 steps at lr 6e-4 with 1,000 warm-up steps, experts
  1,000 steps at lr 6e-5 with 50. Sequence length 1024 is read off the reference trainer's shape comment, not
  from its pre-tokenisation. ``train_expert`` differs in fixed details: Adam betas (0.9, 0.95) instead of
  (0.9, 0.999), decay on matrices only, warm-up from lr/warmup_steps instead of 0.1 x lr.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from ..utils.cache import atomic_dir, cache_root, recipe_key, write_json_atomic
from ..utils.data_layout import SPLITS, load_split, split_path
from .base_model import base_manifest
from .clm_data import write_split
from .train import TrainConfig, TrainResult, expert_recipe, train_expert

PAPER_CLM_VERSION = 1
M2D2_ID = "machelreid/m2d2"
M2D2_REVISION = "6ae613ba744ee56f645aee9c577d04f7e3d48b30"  # last commit seen; data files unchanged since 696eeca
M2D2_SPLIT_FILES = {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"}
OPENWEBTEXT_ID = "Skylion007/openwebtext"
PAPER_DOMAINS = {"cs": "cs_l1", "math": "math_l1", "physics": "physics_l1",
                 "history": "History_and_events", "philosophy": "Philosophy_and_thinking"}
LLAMA3_TOKENIZER = "meta-llama/Meta-Llama-3-8B"  # gated on the hub: log in, or pass an ungated copy
LLAMA3_VOCAB = 128_256
PRETRAIN_CORPUS = "openwebtext"  # folder of the pretraining texts: <corpus dir>/openwebtext/train.jsonl
SIZE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "max_position_embeddings")
MODEL_FIELDS = ("tokenizer", *SIZE_FIELDS, "init_seed")  # what determines the random init

Loader = Callable[[str, str | None, str], Iterable[str]]  # (dataset id, config name, split) -> texts


@dataclass
class PaperCLMRecipe:
    """Model, data and training of the paper's CLM expert set (module docstring: where each number comes from).

    ``pretrain_max_chars``/``train_max_chars`` cap the texts kept (first ones in hub order, ``None``: all) at about
    the tokens the step budgets consume: 20,000 x 64 x 1024 = 1.31B tokens of OpenWebText, 1,000 x 64 x 1024 =
    65.5M per domain, at ~4.5 characters per token. Validation and test splits are kept whole.
    """

    tokenizer: str = LLAMA3_TOKENIZER
    vocab_size: int = LLAMA3_VOCAB
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 2048
    init_seed: int = 42
    pretrain_dataset: str = OPENWEBTEXT_ID
    pretrain_config: str | None = None
    pretrain_max_chars: int | None = 6_000_000_000
    domain_dataset: str = M2D2_ID
    domains: dict[str, str] = field(default_factory=lambda: dict(PAPER_DOMAINS))  # expert name -> hub config
    train_max_chars: int | None = 300_000_000
    pretrain: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=20_000, batch_size=64, seq_len=1024, lr=6e-4, weight_decay=0.01, warmup_steps=1_000,
        min_lr_ratio=0.1, grad_clip=1.0, seed=42, bf16=True))
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=1_000, batch_size=64, seq_len=1024, lr=6e-5, weight_decay=0.01, warmup_steps=50,
        min_lr_ratio=0.1, grad_clip=1.0, seed=42, bf16=True))

    def __post_init__(self) -> None:
        if not self.domains or not all(isinstance(c, str) and c for c in self.domains.values()):
            raise ValueError(f"domains must map each expert name to a non-empty hub config name; got {self.domains}.")
        sizes = {f: getattr(self, f) for f in SIZE_FIELDS}
        if any(v < 1 for v in sizes.values()) or self.hidden_size % self.num_attention_heads:
            raise ValueError(f"Model sizes must be positive and hidden_size divisible by num_attention_heads: {sizes}.")
        for name in ("pretrain_max_chars", "train_max_chars"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be None (no cap) or at least 1; got {getattr(self, name)}.")

    def subset(self, domains: Sequence[str]) -> PaperCLMRecipe:
        """The same recipe restricted to ``domains`` (expert names of ``self.domains``)."""
        unknown = sorted(set(domains) - set(self.domains))
        if unknown:
            raise ValueError(f"Unknown domain(s) {unknown}; this recipe has {list(self.domains)}. "
                             "Add one as domains={name: M2D2 config name} to train its expert.")
        return replace(self, domains={d: self.domains[d] for d in domains})

    def llama_config(self, **token_ids: int | None) -> LlamaConfig:
        """The Llama architecture (multi-head attention, untied embeddings); ``token_ids``: bos/eos/pad ids."""
        return LlamaConfig(vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                           intermediate_size=self.intermediate_size, num_hidden_layers=self.num_hidden_layers,
                           num_attention_heads=self.num_attention_heads, num_key_value_heads=self.num_attention_heads,
                           max_position_embeddings=self.max_position_embeddings, tie_word_embeddings=False,
                           **token_ids)


@dataclass
class PaperCLM:
    """A built expert set; ``view`` holds stable links ``data``, ``pretrained``, ``experts/<domain>`` to the cache."""

    view: Path
    data_dir: Path
    pretrained: Path
    experts: dict[str, Path]
    manifest: dict[str, Any]

    def domains_override(self) -> list[str]:
        """``experts.domains=[...]`` when the set differs from conf/experts/paper_clm.yaml's five domains."""
        return [] if list(self.experts) == list(PAPER_DOMAINS) else [f"experts.domains=[{','.join(self.experts)}]"]

    def overrides(self) -> list[str]:
        """Hydra overrides running ``+experiment=paper_clm`` on these folders (no DUME_PAPER_CLM needed)."""
        models = [f"{'' if d in PAPER_DOMAINS else '+'}experts.models.{d}={p}" for d, p in self.experts.items()]
        return [*self.domains_override(), *models, f"experts.data_dir={self.data_dir}",
                f"experts.base={self.pretrained}"]


def parameter_counts(recipe: PaperCLMRecipe) -> dict[str, int]:
    """Parameters of the recipe's model, counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = LlamaForCausalLM(recipe.llama_config())
    total = sum(p.numel() for p in model.parameters())
    tables = {id(m.weight): m.weight.numel() for m in (model.get_input_embeddings(), model.get_output_embeddings())}
    embedding = sum(tables.values())
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding}


# --------------------------------------------------------------------------------------------- data

def m2d2_archive_texts(archive: str | Path, config_name: str, split: str) -> Iterator[str]:
    """Rows of one split of an M2D2 domain archive: ``<config>/<train|valid|test>.txt``, one stripped line each."""
    if split not in M2D2_SPLIT_FILES:
        raise ValueError(f"Unknown split {split!r}; M2D2 has {list(M2D2_SPLIT_FILES)}.")
    wanted = (config_name, M2D2_SPLIT_FILES[split])
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            if member.isfile() and PurePosixPath(member.name).parts[-2:] == wanted:
                with tar.extractfile(member) as raw:
                    for line in io.TextIOWrapper(raw, encoding="utf-8"):
                        yield line.strip()
                return
    raise FileNotFoundError(f"{archive} holds no {'/'.join(wanted)}: not an M2D2 archive of config {config_name!r}.")


def hub_loader(dataset_id: str, config_name: str | None, split: str) -> Iterator[str]:
    """Texts of one hub split: M2D2 from its pinned per-domain archive, anything else via ``datasets`` streaming."""
    if dataset_id == M2D2_ID:
        from huggingface_hub import hf_hub_download

        archive = hf_hub_download(M2D2_ID, f"data/{config_name}.tar.gz", repo_type="dataset", revision=M2D2_REVISION)
        yield from m2d2_archive_texts(archive, config_name, split)
        return
    from datasets import load_dataset

    for row in load_dataset(dataset_id, config_name, split=split, streaming=True):
        yield row["text"]


def _loader_name(loader: Loader) -> str:
    """A loader's qualified name: it enters the data keys, so a stand-in never shares a cache entry with the hub."""
    return f"{loader.__module__}.{getattr(loader, '__qualname__', type(loader).__qualname__)}"


def _domain_data_recipe(recipe: PaperCLMRecipe, loader: Loader) -> dict[str, Any]:
    return {"artifact": "paper-clm-data", "version": PAPER_CLM_VERSION, "dataset": recipe.domain_dataset,
            "revision": M2D2_REVISION if recipe.domain_dataset == M2D2_ID else None, "domains": recipe.domains,
            "train_max_chars": recipe.train_max_chars, "loader": _loader_name(loader)}


def _pretraining_data_recipe(recipe: PaperCLMRecipe, loader: Loader) -> dict[str, Any]:
    return {"artifact": "paper-clm-pretraining-data", "version": PAPER_CLM_VERSION,
            "dataset": recipe.pretrain_dataset, "config": recipe.pretrain_config,
            "max_chars": recipe.pretrain_max_chars, "loader": _loader_name(loader)}


def _collect(loader: Loader, dataset_id: str, config_name: str | None, split: str, max_chars: int | None,
             progress: bool) -> list[str]:
    """Non-blank texts in the loader's order, stopping at the one that reaches ``max_chars`` characters."""
    texts, chars = [], 0
    for text in tqdm(loader(dataset_id, config_name, split), desc=f"{config_name or dataset_id} {split}", unit="doc",
                     disable=not progress):
        if not text.strip():
            continue
        texts.append(text)
        chars += len(text)
        if max_chars is not None and chars >= max_chars:
            break
    if not texts:
        raise ValueError(f"{dataset_id} (config {config_name!r}) split {split!r} gave no non-blank text. Check the "
                         "config name (module docstring lists the M2D2 ones) or give a loader that serves this split.")
    return texts


def _write_corpora(out_dir: Path, plan: Mapping[str, tuple[str, str | None, Mapping[str, int | None]]],
                   recipe: dict[str, Any], loader: Loader, progress: bool) -> dict[str, Any]:
    """Write ``plan`` ({folder: (dataset, config, {split: max chars})}) and its manifest into ``out_dir`` atomically."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        entries = {}
        for name, (dataset_id, config_name, budgets) in plan.items():
            (tmp / name).mkdir()
            entries[name] = {"source": {"dataset": dataset_id, "config": config_name}, "splits": {
                split: write_split(split_path(tmp, name, split),
                                   _collect(loader, dataset_id, config_name, split, budget, progress))
                for split, budget in budgets.items()}}
        manifest = {"key": out_dir.name, "recipe": recipe, "domains": entries}
        write_json_atomic(tmp / "manifest.json", manifest)
    return json.loads((out_dir / "manifest.json").read_text())


def prepare_domain_data(recipe: PaperCLMRecipe, out_dir: Path, loader: Loader = hub_loader,
                        progress: bool = True) -> dict[str, Any]:
    """Write each recipe domain's train (capped), validation and test splits in the zoo layout; return the manifest."""
    plan = {d: (recipe.domain_dataset, c, {s: recipe.train_max_chars if s == "train" else None for s in SPLITS})
            for d, c in recipe.domains.items()}
    return _write_corpora(out_dir, plan, _domain_data_recipe(recipe, loader), loader, progress)


def prepare_pretraining_data(recipe: PaperCLMRecipe, out_dir: Path, loader: Loader = hub_loader,
                             progress: bool = True) -> dict[str, Any]:
    """Write the pretraining texts (capped) as ``<out_dir>/openwebtext/train.jsonl`` with a manifest; return it."""
    plan = {PRETRAIN_CORPUS: (recipe.pretrain_dataset, recipe.pretrain_config, {"train": recipe.pretrain_max_chars})}
    return _write_corpora(out_dir, plan, _pretraining_data_recipe(recipe, loader), loader, progress)


# --------------------------------------------------------------------------------------------- models

def pretrain(recipe: PaperCLMRecipe, texts: Sequence[str], out_dir: Path) -> TrainResult:
    """Randomly initialise the recipe's Llama (seed ``init_seed``) and train it on ``texts`` with ``recipe.pretrain``.

    The init is saved (with the tokenizer) to a temporary folder beside ``out_dir`` and trained by ``train_expert``,
    which writes ``out_dir`` atomically.
    """
    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(recipe.tokenizer)
    if len(tokenizer) > recipe.vocab_size:
        raise ValueError(f"The tokenizer {recipe.tokenizer} has {len(tokenizer)} tokens but vocab_size is "
                         f"{recipe.vocab_size}; set PaperCLMRecipe.vocab_size to at least {len(tokenizer)}.")
    config = recipe.llama_config(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.init-") as init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.init_seed)
            model = LlamaForCausalLM(config)
        model.save_pretrained(init)
        tokenizer.save_pretrained(init)
        del model
        return train_expert(init, texts, out_dir, recipe.pretrain)


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(target, link.parent), target_is_directory=True)


def _cached_corpus(final: Path, write: Callable[[Path], Any]) -> dict[str, Any]:
    if not (final / "manifest.json").exists():
        write(final)
    return json.loads((final / "manifest.json").read_text())


def build_paper_clm(recipe: PaperCLMRecipe | None = None, root: Path | None = None, loader: Loader = hub_loader,
                    progress: bool = True) -> PaperCLM:
    """Build what is missing of data -> pretrained model -> one expert per domain under ``root`` and return it.

    ``root`` defaults to ``cache_root()``. Layout: ``data/paper_clm/<key>`` (zoo layout), ``data/openwebtext/<key>``,
    ``models/paper_clm/pretrained/<key>``, ``models/paper_clm/experts/<domain>/<key>`` and the view
    ``paper_clm/<key>``. Keys hash what determines each artifact (the loader by qualified name, the pretrained model
    by its recipe and data, an expert by the pretrained weights, its data and ``recipe.finetune``), so a second call
    with the same recipe loads and trains nothing.
    """
    recipe = recipe or PaperCLMRecipe()
    root = Path(root) if root else cache_root()
    data_dir = root / "data" / "paper_clm" / recipe_key(_domain_data_recipe(recipe, loader))
    data = _cached_corpus(data_dir, lambda out: prepare_domain_data(recipe, out, loader, progress))
    corpus_dir = root / "data" / PRETRAIN_CORPUS / recipe_key(_pretraining_data_recipe(recipe, loader))
    corpus = _cached_corpus(corpus_dir, lambda out: prepare_pretraining_data(recipe, out, loader, progress))

    # The random init enters by its recipe: for a given torch build its weights are a function of it.
    init = {"model_sha256": recipe_key({f: getattr(recipe, f) for f in MODEL_FIELDS}, length=64)}
    corpus_sha = corpus["domains"][PRETRAIN_CORPUS]["splits"]["train"]["sha256"]
    pretrained = root / "models" / "paper_clm" / "pretrained" / recipe_key(expert_recipe(init, corpus_sha,
                                                                                         recipe.pretrain))
    if not (pretrained / "train_log.json").exists():
        pretrain(recipe, load_split(corpus_dir, PRETRAIN_CORPUS, "train"), pretrained)

    base_info = base_manifest(pretrained)
    experts = {}
    for domain in recipe.domains:
        train_sha = data["domains"][domain]["splits"]["train"]["sha256"]
        out = root / "models" / "paper_clm" / "experts" / domain / recipe_key(expert_recipe(base_info, train_sha,
                                                                                           recipe.finetune))
        if not (out / "train_log.json").exists():
            train_expert(pretrained, load_split(data_dir, domain, "train"), out, recipe.finetune)
        experts[domain] = out

    stages = {"pretrained": pretrained, **{f"expert:{d}": p for d, p in experts.items()}}
    manifest = {"recipe": asdict(recipe), "loader": _loader_name(loader), "parameters": parameter_counts(recipe),
                "data": {"path": str(data_dir), "domains": data["domains"]},
                "pretraining_data": {"path": str(corpus_dir), "domains": corpus["domains"]},
                "models": {name: {"path": str(p), "train": json.loads((p / "train_log.json").read_text())["result"]}
                           for name, p in stages.items()}}
    view = root / "paper_clm" / recipe_key({"data": data_dir.name, **{n: p.name for n, p in stages.items()}})
    if not (view / "manifest.json").exists():
        with atomic_dir(view) as tmp:
            _link(tmp / "data", data_dir)
            _link(tmp / "pretrained", pretrained)
            for domain, path in experts.items():
                _link(tmp / "experts" / domain, path)
            write_json_atomic(tmp / "manifest.json", manifest)
    return PaperCLM(view, data_dir, pretrained, experts, manifest)


if __name__ == "__main__":  # python -m dume_exp.zoo.paper_clm: the command line is dume_exp.cli.paper_clm
    from ..cli.paper_clm import main

    main()
