"""The Hydra app end to end on micro random experts and micro local perplexity tasks."""
import csv
import json

import pytest

from dume_exp.evaluation.items import items_score
from tests.helpers import make_experts, run_app, tiny_model, write_micro_setup

pytestmark = pytest.mark.slow  # each test runs the app in a subprocess (20-40 s)


@pytest.fixture(scope="module")
def micro_setup(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("e2e")
    experts = make_experts(2, shared_backbone=True, vocab_size=len(tiny_tokenizer))  # oracle == expert
    write_micro_setup(root, experts, tiny_model(vocab_size=len(tiny_tokenizer)), tiny_tokenizer)
    return root


def test_app_writes_results_and_a_consistent_table(micro_setup):
    proc = run_app(micro_setup, "router.lam=auto")  # logger=wandb, offline
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list((micro_setup / "run" / "wandb").rglob("offline-run-*/run-*.wandb"))
    assert (micro_setup / "run" / "resolved_config.yaml").exists() and (micro_setup / "run" / "table.md").exists()
    results = json.loads((micro_setup / "run" / "results.json").read_text())
    rows = {r["name"]: r for r in results["seeds"][0]["rows"]}
    assert list(rows) == ["expert:prose", "expert:code", "base", "weight_average", "oracle", "random_routing",
                          "nearest_centroid", "mergekit_hidden", "mergekit_cheap_embed", "dume", "btx", "dume_plus"]
    assert rows["btx"]["cost"]["backward_tokens"] > 0 and rows["dume"]["cost"]["backward_tokens"] == 0
    assert len(rows["dume"]["routing_counts"]["prose"]) == 2  # layers × experts counts logged per domain
    # Shared backbone: the oracle routes each domain to its own expert, so it has exactly its perplexity
    # (both evaluated as bf16 copies: the routing context must act on the copy).
    for d in ("prose", "code"):
        assert rows["oracle"]["scores"][d] == pytest.approx(rows[f"expert:{d}"]["scores"][d], rel=1e-4)
    # Retention in the CSV is recomputed from the raw scores in the same file.
    table = list(csv.DictReader((micro_setup / "results" / "clm" / "table.csv").open()))
    raw = {r["strategy"]: r for r in table if r["kind"] == "raw"}
    ret = {r["strategy"]: r for r in table if r["kind"] == "retention"}
    assert set(raw) == set(rows)
    for name in raw:
        for d in ("prose", "code"):
            want = 100 * float(raw[f"expert:{d}"][d]) / float(raw[name][d])  # perplexity: PPL(expert)/PPL(method)
            assert float(ret[name][d]) == pytest.approx(want, rel=1e-9)
        assert float(ret[name]["avg"]) == pytest.approx((float(ret[name]["prose"]) + float(ret[name]["code"])) / 2)
    md = (micro_setup / "results" / "clm" / "table.md").read_text()
    assert "## Retention (%)" in md and "| dume |" in md and "Calibration split: **train**" in md
    # Per-document outcomes are kept for every candidate and reproduce its score; the table and claims carry the
    # paired bootstrap intervals computed from them.
    for row in rows.values():
        for d in ("prose", "code"):
            (task_items,) = row["items"][d].values()
            assert items_score(task_items) == pytest.approx(row["scores"][d], rel=1e-12)
            assert task_items["aggregate"] == "perplexity" and len(task_items["doc_id"]) == row["n"][d]
    assert "avg 95% CI" in md
    claims = json.loads((micro_setup / "results" / "clm" / "claims.json").read_text())["claims"]
    assert [c["worse"] for c in claims][:3] == ["weight_average", "random_routing", "oracle"]
    assert all(c["low"] <= c["estimate"] <= c["high"] and c["n_seeds"] == 1 for c in claims)
    # Re-running the same configuration skips the finished cell and republishes the same numbers.
    again = run_app(micro_setup, "router.lam=auto", f"hydra.run.dir={micro_setup}/run_again")
    assert again.returncode == 0 and "already finished; skipping" in again.stdout + again.stderr
    assert json.loads((micro_setup / "run_again" / "results.json").read_text())["seeds"] == results["seeds"]
    # A new λ is a new cell: the experts' scores and the router statistics come from the caches.
    other = run_app(micro_setup, "router.lam=0.5", "strategy=dume", f"hydra.run.dir={micro_setup}/run_lam")
    assert other.returncode == 0, other.stderr[-3000:]
    new_rows = {r["name"]: r for r in json.loads((micro_setup / "run_lam" / "results.json").read_text())["seeds"][0]["rows"]}
    assert new_rows["expert:code"]["eval_cached"] == ["prose", "code"] and new_rows["dume"]["eval_cached"] == []
    assert new_rows["expert:code"]["scores"] == rows["expert:code"]["scores"]
    assert new_rows["dume"]["info"]["statistics"]["loaded"] == ["prose", "code"]
    # The cells of the two λ values make a λ sweep report; the main run drew its routing figure.
    from dume_exp.cli.report import main as report_main

    report_main([str(micro_setup / "results" / "clm" / "cells"), "--out", str(micro_setup / "sweep"),
                 "--figures", str(micro_setup / "figures"), "--logger", "none"])
    sweep = (micro_setup / "sweep" / "lambda.md").read_text()
    assert "| 0.5 |" in sweep and "| auto |" in sweep
    assert (micro_setup / "figures" / "lambda_clm.png").stat().st_size > 0
    assert "Statistics collection:" in sweep and "across 2 dume builds" in sweep
    assert (micro_setup / "results" / "figures" / "clm_routing_dume.png").stat().st_size > 0
    assert (micro_setup / "run" / "routing_dume.png").stat().st_size > 0
    assert list((micro_setup / "run" / "wandb").rglob("media/images/figures/*routing_dume*.png"))  # logged to wandb


def test_bad_configuration_fails_fast_with_the_fix(micro_setup):
    proc = run_app(micro_setup, "logger=none", "calibration.split=test", "strategy=dume")
    assert proc.returncode != 0 and "allow_eval_split=true" in proc.stderr
    proc = run_app(micro_setup, "logger=none", "strategy=dumee")
    assert proc.returncode != 0 and "Available options in 'strategy'" in proc.stderr
    proc = run_app(micro_setup, "logger=none", "router.lam=-1")
    assert proc.returncode != 0 and "router.lam must be a finite number ≥ 0 or 'auto'" in proc.stderr


def test_paper_shaped_experts_merge_and_save_a_loadable_model(tmp_path, tiny_tokenizer):
    """Experts shaped like the paper's (Llama 3 RoPE scaling, grouped-query attention, a head_dim that is not
    hidden/heads, tied embeddings, one expert with 64 extra vocabulary rows) run through the app with the reference
    protocol switches; the saved DUME folder loads with the stock Auto class and its card carries the table's row."""
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM

    import dume_exp  # noqa: F401  (registers the DUME classes: no remote code needed)

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    experts = make_experts(2, shared_backbone=False, vocab_size=len(tiny_tokenizer), head_dim=12,
                           rope_parameters=rope)
    experts[1].resize_token_embeddings(len(tiny_tokenizer) + 64, mean_resizing=False)
    write_micro_setup(tmp_path, experts, experts[0], tiny_tokenizer)
    proc = run_app(tmp_path, "logger=none", "strategy=dume", "router.top_k=2", "router.temperature=0.1",
                "calibration.mask_padding=false", "save_models=[dume]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"({tmp_path}/experts/code) has 364 vocabulary rows; merging on the 300 rows" in proc.stderr
    folder = tmp_path / "run" / "models" / "dume"
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert type(model).__name__ == "DumeLlamaForCausalLM" and model.config.vocab_size == 300
    assert model.config.rope_parameters["rope_type"] == "llama3" and model.config.head_dim == 12
    assert model.config.dume_moe == {"num_experts": 2, "top_k": 2, "temperature": 0.1}
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    table = {r["strategy"]: r for r in csv.DictReader((tmp_path / "results" / "clm" / "table.csv").open())
             if r["kind"] == "retention"}
    card = ModelCard.load(folder / "README.md")
    retention = model.config.dume_provenance["retention"]
    for d in ("prose", "code", "avg"):
        assert retention[d] == pytest.approx(float(table["dume"][d]), abs=0.05)
    assert "mask_padding = False" in card.text and card.data.base_model == [
        str(tmp_path / "experts" / d) for d in ("prose", "code")]
    assert results["calibration"]["mask_padding"] is False
