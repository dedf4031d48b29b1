"""Paper-scale recipes: their Hydra configs, and the paper CLM build on a local stand-in (micro Llama, fake hub)."""
from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from dume_exp.utils.cache import file_sha256
from dume_exp.experiment.config import CONF_DIR, register_configs
from dume_exp.experiment.validate import validate
from dume_exp.zoo.paper_clm import (
    LLAMA3_VOCAB, M2D2_ID, OPENWEBTEXT_ID, PAPER_DOMAINS, PaperCLMRecipe, build_paper_clm, m2d2_archive_texts,
    parameter_counts, prepare_domain_data, pretrain,
)
from dume_exp.zoo.train import TrainConfig

CONF = CONF_DIR
MICRO = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=64)
STEPS = dict(batch_size=2, seq_len=16, lr=1e-2, warmup_steps=0, bf16=False, threads=1)
TRAIN_CHARS = 600


class FakeHub:
    """Stand-in loader: a few dozen short texts per (dataset, config, split), blank rows included; counts calls."""

    def __init__(self, blank: tuple[str, str] | None = None) -> None:
        self.calls: list[tuple[str, str | None, str]] = []
        self.blank = blank  # (config, split) served as blank rows only

    def __call__(self, dataset_id: str, config_name: str | None, split: str) -> list[str]:
        self.calls.append((dataset_id, config_name, split))
        if (config_name, split) == self.blank:
            return ["", "   "]
        n = 40 if dataset_id == OPENWEBTEXT_ID else 30
        return ["", *(f"{config_name or 'web'} {split} document {i}: the fox reads {i} pages of {split}."
                      for i in range(n))]


def compose_config(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def micro_recipe(tokenizer_dir: Path, vocab_size: int) -> PaperCLMRecipe:
    return PaperCLMRecipe(tokenizer=str(tokenizer_dir), vocab_size=vocab_size, **MICRO, pretrain_max_chars=None,
                          train_max_chars=TRAIN_CHARS, pretrain=TrainConfig(steps=2, **STEPS),
                          finetune=TrainConfig(steps=1, **STEPS))


def file_mtimes(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------------------------- (a) configs

@pytest.mark.parametrize("experiment", ["paper_clm", "paper_reasoning"])
def test_paper_experiments_compose_with_the_paper_numbers(experiment):
    cfg = compose_config(f"+experiment={experiment}")
    validate(cfg)
    assert cfg.experiment == experiment and cfg.experts.source == "pretrained"
    assert cfg.router.top_k == 1 and cfg.router.lam == pytest.approx(1e-2)
    assert cfg.router.max_tokens_per_sequence == 1024
    assert cfg.calibration.split == "train" and cfg.calibration.max_samples == 2048
    assert (cfg.router_training.steps, cfg.router_training.lr, cfg.router_training.warmup_steps) == (
        1000, pytest.approx(1e-4), 10)
    assert cfg.eval.limit is None


def test_paper_clm_config_names_the_five_domains(monkeypatch):
    monkeypatch.delenv("DUME_PAPER_CLM", raising=False)
    cfg = compose_config("+experiment=paper_clm")
    assert list(cfg.experts.domains) == list(PAPER_DOMAINS) == list(cfg.experts.models)
    assert cfg.eval.suite == "zoo_clm" and cfg.eval.split == "test"
    assert cfg.experts.models.cs == "DUME_PAPER_CLM_not_set/experts/cs"  # resolvable, and says what is missing


# --------------------------------------------------------------------------------------------- (b) build path

@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    path = tmp_path_factory.mktemp("tokenizer")
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory, tokenizer_dir, tiny_tokenizer):
    """Two builds of the micro recipe on the fake hub; file mtimes taken between them."""
    root = tmp_path_factory.mktemp("paper_clm")
    recipe = micro_recipe(tokenizer_dir, len(tiny_tokenizer))
    hub = FakeHub()
    first = build_paper_clm(recipe, root, loader=hub, progress=False)
    mtimes = {d: file_mtimes(root / d) for d in ("data", "models", "paper_clm")}
    again_hub = FakeHub()
    second = build_paper_clm(recipe, root, loader=again_hub, progress=False)
    return {"root": root, "recipe": recipe, "hub": hub, "first": first, "mtimes": mtimes, "again_hub": again_hub,
            "second": second}


def test_domain_data_layout_manifest_and_hashes(built):
    data_dir, recipe = built["first"].data_dir, built["recipe"]
    manifest = json.loads((data_dir / "manifest.json").read_text())
    assert sorted(manifest["domains"]) == sorted(PAPER_DOMAINS)  # JSON keys are written sorted
    assert sorted(p.name for p in data_dir.iterdir() if p.is_dir()) == sorted(PAPER_DOMAINS)
    for domain, config in PAPER_DOMAINS.items():
        entry = manifest["domains"][domain]
        assert entry["source"] == {"dataset": M2D2_ID, "config": config}
        for split in ("train", "validation", "test"):
            path = data_dir / domain / f"{split}.jsonl"
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            assert entry["splits"][split]["sha256"] == file_sha256(path)
            assert entry["splits"][split]["documents"] == len(rows) > 0
            assert all(set(r) == {"text"} and r["text"].strip() for r in rows)  # blank rows dropped
            assert all(r["text"].startswith(f"{config} {split} ") for r in rows)
        train = [json.loads(line)["text"] for line in (data_dir / domain / "train.jsonl").read_text().splitlines()]
        chars = sum(map(len, train))
        assert chars >= TRAIN_CHARS > chars - len(train[-1]) and len(train) < 30  # stops at the capping text
    assert (OPENWEBTEXT_ID, recipe.pretrain_config, "train") in built["hub"].calls


def test_pretrained_model_has_the_micro_parameter_count(built, tiny_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(built["first"].pretrained)
    vocab, h, layers, inter = len(tiny_tokenizer), MICRO["hidden_size"], MICRO["num_hidden_layers"], \
        MICRO["intermediate_size"]
    formula = 2 * vocab * h + layers * (4 * h * h + 3 * h * inter + 2 * h) + h  # untied tables, MHA, 2 norms/layer
    assert sum(p.numel() for p in model.parameters()) == formula == parameter_counts(built["recipe"])["total"]
    log = json.loads((built["first"].pretrained / "train_log.json").read_text())
    assert log["config"]["steps"] == 2 and log["result"]["steps"] == 2


def test_experts_load_and_differ_from_the_pretrained_model(built):
    pretrained = load_file(built["first"].pretrained / "model.safetensors")
    assert list(built["first"].experts) == list(PAPER_DOMAINS)
    for domain, path in built["first"].experts.items():
        model = AutoModelForCausalLM.from_pretrained(path)
        state = model.state_dict()
        assert any(not torch.equal(state[k], v) for k, v in pretrained.items()), domain
        assert json.loads((path / "train_log.json").read_text())["result"]["steps"] == 1


def test_second_build_is_a_cache_hit(built):
    first, second = built["first"], built["second"]
    assert built["again_hub"].calls == []  # no data loaded
    assert (second.view, second.data_dir, second.pretrained, second.experts) == \
        (first.view, first.data_dir, first.pretrained, first.experts)
    for folder, before in built["mtimes"].items():
        assert file_mtimes(built["root"] / folder) == before  # nothing retrained or rewritten


def test_view_links_and_config_resolve_to_the_built_folders(built, monkeypatch):
    first = built["first"]
    assert (first.view / "pretrained").resolve() == first.pretrained.resolve()
    for domain, path in first.experts.items():
        assert (first.view / "experts" / domain).resolve() == path.resolve()
    monkeypatch.setenv("DUME_PAPER_CLM", str(first.view))
    cfg = compose_config("+experiment=paper_clm")
    assert Path(cfg.experts.models.cs).resolve() == first.experts["cs"].resolve()
    assert (Path(cfg.experts.data_dir) / "math" / "test.jsonl").is_file()
    monkeypatch.delenv("DUME_PAPER_CLM")
    explicit = compose_config("+experiment=paper_clm", *first.overrides())
    assert {d: Path(p) for d, p in explicit.experts.models.items()} == first.experts
    assert Path(explicit.experts.data_dir) == first.data_dir and Path(explicit.experts.base) == first.pretrained
    subset = replace(first, experts={d: first.experts[d] for d in ("math", "cs")})
    cfg = OmegaConf.to_container(compose_config("+experiment=paper_clm", *subset.overrides()), resolve=True)
    assert cfg["experts"]["domains"] == ["math", "cs"] and cfg["experts"]["models"]["cs"] == str(first.experts["cs"])


# --------------------------------------------------------------------------------------------- errors, archive

def test_empty_split_names_config_and_split_and_leaves_nothing(tmp_path, tokenizer_dir, tiny_tokenizer):
    recipe = micro_recipe(tokenizer_dir, len(tiny_tokenizer))
    with pytest.raises(ValueError, match=r"math_l1.*'validation'.*config name"):
        prepare_domain_data(recipe, tmp_path / "data", loader=FakeHub(blank=("math_l1", "validation")),
                            progress=False)
    assert not (tmp_path / "data").exists()


def test_unknown_domain_and_small_vocab_fail_clearly(tmp_path, tokenizer_dir, tiny_tokenizer):
    recipe = micro_recipe(tokenizer_dir, len(tiny_tokenizer))
    with pytest.raises(ValueError, match=r"Unknown domain\(s\) \['biology'\]"):
        recipe.subset(["cs", "biology"])
    assert list(recipe.subset(["math", "cs"]).domains) == ["math", "cs"]
    small = micro_recipe(tokenizer_dir, len(tiny_tokenizer) - 1)
    with pytest.raises(ValueError, match="vocab_size to at least"):
        pretrain(small, ["some text"] * 4, tmp_path / "model")


def test_m2d2_archive_reader(tmp_path):
    archive = tmp_path / "cs_l1.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, text in (("train.txt", "a line \nsecond\n"), ("valid.txt", "v\n"), ("test.txt", "\nt1\n")):
            data = text.encode()
            info = tarfile.TarInfo(f"cs_l1/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert list(m2d2_archive_texts(archive, "cs_l1", "train")) == ["a line", "second"]
    assert list(m2d2_archive_texts(archive, "cs_l1", "validation")) == ["v"]
    assert list(m2d2_archive_texts(archive, "cs_l1", "test")) == ["", "t1"]
    with pytest.raises(FileNotFoundError, match="math_l1"):
        list(m2d2_archive_texts(archive, "math_l1", "test"))


# --------------------------------------------------------------------------------------------- (c) full size

def test_full_recipe_is_the_115m_llama():
    recipe = PaperCLMRecipe()
    counts = parameter_counts(recipe)  # meta device: nothing allocated
    assert 105e6 <= counts["non_embedding"] <= 125e6 and counts["non_embedding"] == 113_265_408
    assert counts["embedding"] == 2 * LLAMA3_VOCAB * recipe.hidden_size
    assert counts["total"] == counts["non_embedding"] + counts["embedding"] == 310_266_624
    assert recipe.domains == PAPER_DOMAINS and os.path.basename(recipe.tokenizer) == "Meta-Llama-3-8B"
