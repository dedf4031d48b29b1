"""Reference protocol switches: calibration.text (prompt | prompt_answer), calibration.mask_padding, experts.vocab."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from dume_exp import collect_statistics, force_expert, moe_blocks, upcycle
import dume_exp.experiment.config as config_mod
from dume_exp.experiment.config import CONF_DIR, Config, register_configs
from dume_exp.experiment.calibration import assistant_header, calibration_record, calibration_texts, row_text
from dume_exp.experiment.cells import KEY_NEUTRAL_DEFAULTS, cell_path
from dume_exp.experiment.validate import validate
from dume_exp.reporting.tables import render_markdown, table_rows
from dume_exp.method.statistics_store import StatisticsStore
from dume_exp.strategies import BuildContext, RouterConfig
from dume_exp.utils.cache import recipe_key

from tests.helpers import make_experts

CONF = CONF_DIR
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] "
          "+ '<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = ("{% for message in messages %}{{'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' "
          "+ message['content'] + '<|eot_id|>'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
TRANSCRIPT = ("<|im_start|>user\nComplete this:\n```python\ndef f(x):\n```\n<|im_end|>\n<|im_start|>assistant\n"
              "Here it is:\n```python\ndef f(x):\n\x1e    return x\n```<|im_end|>\n")
TEXTS = ["The quick brown fox.", "def f(x):\n    return x + 1\n" * 2, "dog", "The lazy dog jumps over the fox again."]


def with_template(tokenizer, template: str | None):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = template
    return tok


# --------------------------------------------------------------------------------------------- mask_padding

def padded_batches(tokenizer, side: str) -> list[list[dict[str, torch.Tensor]]]:
    """Two experts' tokenizer-padded calibration batches (pad id 0), some rows mostly padding."""
    tok = copy.deepcopy(tokenizer)
    tok.padding_side = side
    out = []
    for d in range(2):
        texts = TEXTS[d:] + TEXTS[:d]
        out.append([dict(tok(texts[i : i + 2], padding=True, return_tensors="pt")) for i in (0, 2)])
    return out


def reference_statistics(moe, batches_by_expert, max_tokens: int, keep_pads: bool) -> tuple[np.ndarray, np.ndarray]:
    """Gram and sums of x̃ = [x; 1] over the block inputs of the first ``max_tokens`` columns of each batch as given
    (every position, or the attention-masked ones), from forward hooks and numpy."""
    blocks = moe_blocks(moe)
    grams, sums = [], []
    for d, batches in enumerate(batches_by_expert):
        rows = {i: [] for i in range(len(blocks))}
        hooks = [b.register_forward_pre_hook(lambda m, a, i=i: rows[i].append(a[0].double().flatten(0, 1)))
                 for i, b in enumerate(blocks)]
        keep = []
        with torch.no_grad(), force_expert(moe, d):
            for b in batches:
                ids, mask = b["input_ids"][:, :max_tokens], b["attention_mask"][:, :max_tokens]
                moe(input_ids=ids, attention_mask=mask)
                keep.append(torch.ones(ids.numel(), dtype=torch.bool) if keep_pads else mask.reshape(-1).bool())
        for h in hooks:
            h.remove()
        xs = [torch.cat([x[k] for x, k in zip(rows[i], keep)]).numpy() for i in range(len(blocks))]
        xts = [np.hstack([x, np.ones((len(x), 1))]) for x in xs]
        grams.append([xt.T @ xt for xt in xts])
        sums.append([xt.sum(0) for xt in xts])
    return np.array(grams).transpose(1, 0, 2, 3), np.array(sums).transpose(1, 0, 2)


@pytest.fixture(scope="module")
def moe64():
    return upcycle(make_experts(2, vocab_size=300)).to(torch.float64)


@pytest.mark.parametrize("side, max_tokens", [("right", 64), ("left", 64), ("right", 5)])
def test_unmasked_statistics_count_every_position_of_the_padded_batch(moe64, tiny_tokenizer, side, max_tokens):
    batches = padded_batches(tiny_tokenizer, side)
    stats = collect_statistics(moe64, batches, max_tokens, progress=False, mask_padding=False)
    gram, sums = reference_statistics(moe64, batches, max_tokens, keep_pads=True)
    np.testing.assert_allclose(stats.gram.numpy(), gram, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(stats.sums.numpy(), sums, rtol=1e-10, atol=1e-10)
    grid = [sum(b["input_ids"][:, :max_tokens].numel() for b in expert) for expert in batches]
    assert stats.token_counts.tolist() == grid  # pads included: every position of each [B, T] grid
    masked = collect_statistics(moe64, batches, max_tokens, progress=False)
    assert (masked.token_counts < stats.token_counts).all()  # every expert's batches hold padding


def test_masked_statistics_are_unchanged(moe64, tiny_tokenizer):
    batches = padded_batches(tiny_tokenizer, "right")
    default = collect_statistics(moe64, batches, 64, progress=False)
    explicit = collect_statistics(moe64, batches, 64, progress=False, mask_padding=True)
    assert torch.equal(default.gram, explicit.gram) and torch.equal(default.sums, explicit.sums)
    gram, sums = reference_statistics(moe64, batches, 64, keep_pads=False)
    np.testing.assert_allclose(default.gram.numpy(), gram, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(default.sums.numpy(), sums, rtol=1e-10, atol=1e-10)
    real = [int(sum(b["attention_mask"].sum() for b in expert)) for expert in batches]
    assert default.token_counts.tolist() == real


def test_store_keys_separate_masked_and_unmasked_statistics(moe64, tiny_tokenizer, tmp_path):
    batches, names = padded_batches(tiny_tokenizer, "right"), ["a", "b"]
    store = StatisticsStore(tmp_path)
    masked = store.keys(moe64, batches, 64)
    assert masked == store.keys(moe64, batches, 64, mask_padding=True)
    assert set(store.keys(moe64, batches, 64, mask_padding=False)).isdisjoint(masked)
    store.statistics(moe64, batches, 64, names, progress=False)  # masked statistics stored first
    unmasked, report = store.statistics(moe64, batches, 64, names, progress=False, mask_padding=False)
    assert report["collected"] == names  # never the stored masked ones
    direct = collect_statistics(moe64, batches, 64, names, progress=False, mask_padding=False)
    assert torch.equal(unmasked.gram, direct.gram) and torch.equal(unmasked.sums, direct.sums)


@pytest.mark.parametrize("store", [False, True])
def test_build_context_statistics_follow_mask_padding(tiny_tokenizer, tmp_path, store):
    batches = padded_batches(tiny_tokenizer, "right")
    ctx = BuildContext(experts=make_experts(2, vocab_size=300), domains=["a", "b"], calibration_batches=lambda: batches,
                       training_batches=lambda: [], router=RouterConfig(max_tokens_per_sequence=64), mask_padding=False,
                       progress=False, stats_store=StatisticsStore(tmp_path) if store else None)
    stats, cost, _ = ctx.statistics
    direct = collect_statistics(ctx.upcycled(), batches, 64, progress=False, mask_padding=False)
    assert torch.equal(stats.gram, direct.gram) and torch.equal(stats.sums, direct.sums)
    assert cost.forward_tokens == sum(b["input_ids"].numel() for expert in batches for b in expert)  # pads included


# --------------------------------------------------------------------------------------------- calibration.text

@pytest.mark.parametrize("template, header", [(CHATML, "<|im_start|>assistant\n"),
                                              (LLAMA3, "<|start_header_id|>assistant<|end_header_id|>\n\n")])
def test_assistant_header_comes_from_the_chat_template(tiny_tokenizer, template, header):
    assert assistant_header(with_template(tiny_tokenizer, template)) == header


def test_prompt_text_cuts_a_chat_transcript_after_the_first_assistant_header():
    header = lambda: "<|im_start|>assistant\n"  # noqa: E731
    prompt = "<|im_start|>user\nComplete this:\n```python\ndef f(x):\n```\n<|im_end|>\n<|im_start|>assistant\n"
    assert row_text({"text": TRANSCRIPT}, "prompt", header) == prompt
    assert row_text({"text": TRANSCRIPT + TRANSCRIPT}, "prompt", header) == prompt  # the first turn only
    assert row_text({"text": TRANSCRIPT}, "prompt_answer", header) == TRANSCRIPT


def test_prompt_text_of_question_answer_rows_is_the_question():
    never = lambda: pytest.fail("question rows need no chat template")  # noqa: E731
    row = {"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"}
    assert row_text(row, "prompt", never) == "What is 2 + 3?"
    assert row_text(row, "prompt_answer", never) == "What is 2 + 3?\n2 + 3 = 5\n#### 5"
    assert row_text({"prompt": "Write a haiku.", "answer": "..."}, "prompt", never) == "Write a haiku."


def write_rows(data_dir: Path, domain: str, rows: list[dict]) -> None:
    (data_dir / domain).mkdir(parents=True, exist_ok=True)
    (data_dir / domain / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def calibration_cfg(**calibration):
    cfg = OmegaConf.structured(Config)
    cfg.strategy = {"dume": True}
    cfg.experts.domains = ["math", "multilingual"]  # the schema's default names none
    cfg.calibration.update(calibration)
    return cfg


def test_calibration_texts_read_each_domain_in_prompt_mode(tmp_path, tiny_tokenizer):
    write_rows(tmp_path, "coding", [{"text": TRANSCRIPT}, {"text": TRANSCRIPT.replace("f(x)", "g(y)")}])
    write_rows(tmp_path, "math", [{"question": "1 + 1?", "answer": "2"}, {"question": " ", "answer": "blank"}])
    texts = calibration_texts(calibration_cfg(text="prompt"), tmp_path, ["coding", "math"],
                              with_template(tiny_tokenizer, CHATML))
    assert [t.endswith("<|im_start|>assistant\n") and "\x1e" not in t for t in texts["coding"]] == [True, True]
    assert texts["math"] == ["1 + 1?"]  # blank prompts are skipped
    whole = calibration_texts(calibration_cfg(), tmp_path, ["coding", "math"], tiny_tokenizer)
    assert whole == {"coding": [TRANSCRIPT, TRANSCRIPT.replace("f(x)", "g(y)")], "math": ["1 + 1?\n2", " \nblank"]}


def test_prompt_mode_errors_name_the_problem_and_the_fix(tmp_path, tiny_tokenizer):
    cfg = calibration_cfg(text="prompt")
    write_rows(tmp_path, "coding", [{"text": TRANSCRIPT}])
    with pytest.raises(ValueError, match=r"train.jsonl:1: .*no chat template; use calibration.text=prompt_answer"):
        calibration_texts(cfg, tmp_path, ["coding"], with_template(tiny_tokenizer, None))
    no_prompt = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
    with pytest.raises(ValueError, match="renders no generation prompt; use calibration.text=prompt_answer"):
        calibration_texts(cfg, tmp_path, ["coding"], with_template(tiny_tokenizer, no_prompt))
    write_rows(tmp_path, "prose", [{"text": TRANSCRIPT}, {"text": "plain text, no chat turns"}])
    with pytest.raises(ValueError, match=r"prose/train.jsonl:2: .*assistant header '<\|im_start\|>assistant\\n'.*"
                                         "question/prompt fields.*calibration.text=prompt_answer"):
        calibration_texts(cfg, tmp_path, ["prose"], with_template(tiny_tokenizer, CHATML))
    write_rows(tmp_path, "math", [{"question": "1 + 1?", "answer": "2"}])
    assert calibration_texts(cfg, tmp_path, ["math"], with_template(tiny_tokenizer, None)) == {"math": ["1 + 1?"]}


# --------------------------------------------------------------------------------------------- config, keys, tables

def test_bad_protocol_values_are_refused():
    validate(calibration_cfg())
    validate(calibration_cfg(text="prompt", mask_padding=False))
    with pytest.raises(ValidationError, match=r"Invalid value 'question', expected one of \[prompt_answer, prompt\]"
                                              r"\n\s+full_key: calibration.text"):
        calibration_cfg(text="question")
    loose = OmegaConf.create(OmegaConf.to_container(calibration_cfg()))  # structured configs type-check bools first
    loose.calibration.mask_padding = "no"
    with pytest.raises(ValueError, match="calibration.mask_padding must be true or false"):
        validate(loose)
    with pytest.raises(ValidationError, match=r"Invalid value 'truncate', expected one of \[align, strict\]"
                                              r"\n\s+full_key: experts.vocab"):
        calibration_cfg().experts.vocab = "truncate"


def compose_config(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_paper_reasoning_uses_the_reference_protocol_and_the_zoo_keeps_the_defaults():
    paper = compose_config("+experiment=paper_reasoning")
    assert (paper.router.temperature, paper.calibration.text, paper.calibration.mask_padding) == (0.1, "prompt", False)
    zoo = compose_config("+experiment=reasoning")
    assert (zoo.router.temperature, zoo.calibration.text, zoo.calibration.mask_padding) == (1.0, "prompt_answer", True)
    assert zoo.experts.vocab == "align"
    assert calibration_record(paper.calibration) == {"split": "train", "max_samples": 2048, "eval_split_leak": False,
                                                     "text": "prompt", "mask_padding": False}


def test_cell_key_ignores_new_fields_only_at_their_defaults():
    schema = OmegaConf.structured(Config)
    resolved = {"device": "cpu"}  # keyed as it resolves: device=auto on a machine without a GPU
    assert OmegaConf.select(schema, "device") == "auto"
    assert ({k: OmegaConf.select(schema, k) for k in KEY_NEUTRAL_DEFAULTS if k not in resolved}
            == {k: v for k, v in KEY_NEUTRAL_DEFAULTS.items() if k not in resolved})
    cfg = compose_config("+experiment=reasoning")
    before = OmegaConf.to_container(cfg)  # a configuration from before the fields existed
    for dotted in KEY_NEUTRAL_DEFAULTS:
        *parents, leaf = dotted.split(".")
        node = before
        for parent in parents:
            node = node[parent]
        del node[leaf]
    assert cell_path(OmegaConf.create(before)) == cell_path(cfg)
    keys = {cell_path(cfg)}
    for override in ("calibration.text=prompt", "calibration.mask_padding=false", "experts.vocab=strict"):
        keys.add(cell_path(compose_config("+experiment=reasoning", override)))
    assert len(keys) == 4


def test_router_training_keys_cells_as_btx_did(monkeypatch):
    """The group renamed from ``btx`` keys results cells under its old name, and enumerated settings hash as their
    strings (the keys below were recorded, on a CPU with native bf16, when the experiments gained three seeds and the
    training-free peers; the null bf16 switches key as that machine's decision, so the test takes it on any CPU)."""
    monkeypatch.setattr(config_mod, "native_bf16", lambda device="cpu": True)
    trained = ("steps=5", "lr=0.001", "seq_len=64", "batch_size=2", "load_balance_alpha=0.01")
    cfg = compose_config("+experiment=reasoning", *(f"router_training.{o}" for o in trained))
    assert cell_path(cfg).name == "f520628b9eb9d0ea0e38.json"
    gate = compose_config("+experiment=clm", "router_training.train_gate_proj=true", "router_training.bf16=false")
    assert cell_path(gate).name == "cec14f0eb4f2f4b7b08a.json"
    committed = cell_path(compose_config("+experiment=reasoning"))
    assert committed.name == "034ea678468b775542bb.json"
    assert recipe_key({"protocol": cfg.eval.protocol}) == recipe_key({"protocol": "harness"})  # evaluation keys


def results_with(calibration: dict) -> dict:
    def row(name: str, score: float) -> dict:
        strategy = "dense_expert" if name.startswith("expert:") else name
        return {"name": name, "strategy": strategy, "scores": {"math": score}, "cost": {"wall_s": 1.0, "forward_tokens": 1, "backward_tokens": 0}}

    return {"title": "t", "domains": ["math"], "metrics": {"math": {"label": "acc", "higher_is_better": True}},
            "seed_list": [0], "seeds": [{"seed": 0, "rows": [row("expert:math", 0.5), row("dume", 0.4)]}],
            "calibration": {"split": "train", "max_samples": 4, "eval_split_leak": False, **calibration}}


def test_tables_mark_the_reference_protocol():
    def markdown(**calibration) -> str:
        results = results_with(calibration)
        return render_markdown(results, table_rows(results))

    reference = markdown(text="prompt", mask_padding=False)
    assert "**PADDING COUNTED**: router statistics include the padding tokens" in reference
    assert "Calibration text: **prompt** (questions/prompts only, no answers)." in reference
    for default in (markdown(), markdown(text="prompt_answer", mask_padding=True)):  # old results: no keys
        assert "PADDING COUNTED" not in default and "Calibration text" not in default
