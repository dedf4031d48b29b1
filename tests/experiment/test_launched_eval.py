"""``eval.backend=hf``: the app scores each candidate's saved folder in two torchrun processes and gets the in-memory
scores and routing counts (the oracle, whose routing follows the domain scored, stays in memory)."""
import json

import pytest

from tests.helpers import make_experts, run_app, tiny_model, write_micro_setup


def rows(root, run):
    return {r["name"]: r for r in json.loads((root / run / "results.json").read_text())["seeds"][0]["rows"]}


@pytest.mark.slow
def test_two_launched_processes_reproduce_the_in_memory_scores(tmp_path, tiny_tokenizer):
    experts = make_experts(2, shared_backbone=False, vocab_size=len(tiny_tokenizer))
    write_micro_setup(tmp_path, experts, tiny_model(vocab_size=len(tiny_tokenizer)), tiny_tokenizer)
    common = ("strategy=[dense_expert,oracle,dume]", "logger=none", "eval.bf16=false")
    memory = run_app(tmp_path, *common, f"hydra.run.dir={tmp_path}/memory")
    assert memory.returncode == 0, memory.stderr[-3000:]
    launched = run_app(tmp_path, *common, "eval.backend=hf", "eval.processes=2", f"hydra.run.dir={tmp_path}/hf")
    assert launched.returncode == 0, launched.stderr[-3000:]
    before, after = rows(tmp_path, "memory"), rows(tmp_path, "hf")
    assert after["dume"]["eval_cached"] == [] and after["expert:prose"]["eval_cached"] == []  # scored anew
    assert after["oracle"]["eval_cached"] == ["prose", "code"]  # in memory, so the same evaluation key
    for name in ("expert:prose", "expert:code", "dume"):
        for domain, score in before[name]["scores"].items():
            assert after[name]["scores"][domain] == pytest.approx(score, rel=1e-6)
    assert after["dume"]["routing_counts"] == before["dume"]["routing_counts"]  # summed over both processes
    entries = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "evaluations").glob("*.json")]
    assert sum(e.get("processes") == 2 for e in entries) == 6  # 3 launched candidates x 2 domains

