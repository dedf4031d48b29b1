"""``eval.backend=vllm`` through the app's own path, with a stand-in for vLLM (which needs a GPU): each candidate is
exported to a folder that the stock transformers classes load, gated on parity, then scored by lm-eval through the
engine; the scores equal the in-memory ones, an engine that fails the gate scores nothing, and settings vLLM cannot
serve are refused before any work."""
import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

import dume_exp.experiment.validate
from dume_exp.evaluation import make_lm
from dume_exp.experiment import vllm_scoring
from dume_exp.export.parity import ParityError
from tests.export.test_parity import TransformersEngine
from tests.helpers import make_experts, run_micro, tiny_model, write_micro_setup

SERVABLE = ("eval.bf16=false", "router.bias=false", "strategy=[dense_expert,oracle,weight_average,dume,mergekit_hidden]")


class StandIn:
    """Opens what vLLM would serve: the folder loaded by the stock transformers class alone (no DUME code), wrapped
    in lm-eval's HFLM, and a parity engine on it (``noise`` perturbs its log-probabilities)."""

    def __init__(self, noise: float = 0.0):
        self.noise, self.opened = noise, []

    def __call__(self, folder, cfg, seed):
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        self.opened.append(type(model).__name__)
        lm = make_lm(model, AutoTokenizer.from_pretrained(folder), batch_size=cfg.eval.batch_size)
        return lm, TransformersEngine(model, noise=self.noise)


@pytest.fixture
def micro(tmp_path, tiny_tokenizer, monkeypatch):
    experts = make_experts(2, shared_backbone=False, vocab_size=len(tiny_tokenizer))
    write_micro_setup(tmp_path, experts, tiny_model(vocab_size=len(tiny_tokenizer)), tiny_tokenizer)
    monkeypatch.setenv("DUME_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(dume_exp.experiment.validate, "vllm_installed", lambda: True)
    return tmp_path


def rows(results):
    return {r["name"]: r for r in results["seeds"][0]["rows"]}


@pytest.mark.slow
def test_served_exports_reproduce_the_in_memory_scores(micro, monkeypatch):
    memory = rows(run_micro(micro, "memory", *SERVABLE))
    engine = StandIn()
    monkeypatch.setitem(vllm_scoring.ENGINES, "vllm", engine)
    served = rows(run_micro(micro, "vllm", *SERVABLE, "eval.backend=vllm", "resume=false"))
    # two dense experts, weight averaging as saved; DUME and mergekit_hidden exported to Mixtral; the oracle in memory
    assert sorted(engine.opened) == ["LlamaForCausalLM"] * 3 + ["MixtralForCausalLM"] * 2
    assert served["oracle"]["eval_cached"] == ["prose", "code"]
    for name in ("expert:prose", "expert:code", "weight_average", "dume", "mergekit_hidden"):
        assert served[name]["eval_cached"] == []
        for domain, score in memory[name]["scores"].items():
            assert served[name]["scores"][domain] == pytest.approx(score, rel=1e-6)
        assert served[name]["routing_counts"] == {}  # the engine keeps none
    entries = [json.loads(p.read_text()) for p in (micro / "cache" / "evaluations").glob("*.json")]
    gated = [e["parity"] for e in entries if "parity" in e]
    assert len(gated) == 10 and all(g.startswith("parity passed") for g in gated)


@pytest.mark.slow
def test_an_engine_failing_the_gate_scores_nothing(micro, monkeypatch):
    monkeypatch.setitem(vllm_scoring.ENGINES, "vllm", StandIn(noise=0.5))
    with pytest.raises(ParityError, match="REFUSED"):
        run_micro(micro, "vllm", *SERVABLE, "eval.backend=vllm", "strategy=[dume]")
    assert not list((micro / "cache" / "evaluations").glob("*.json"))
    assert not list((micro / "results").glob("**/cells/*.json"))


@pytest.mark.parametrize("overrides, words", [
    (["router.bias=true"], ["router.bias=false", "no bias"]),
    (["strategy=[dume,btx,random_routing]"], ["cannot serve ['random_routing', 'btx']", "Leave them out"]),
    (["eval.processes=2"], ["eval.processes=2 applies to eval.backend=hf", "tensor_parallel_size"]),
])
def test_settings_vllm_cannot_serve_are_refused_before_any_work(micro, overrides, words):
    with pytest.raises(ValueError) as info:
        run_micro(micro, "run", *SERVABLE, "eval.backend=vllm", *overrides)
    for word in words:
        assert word in str(info.value)
    assert not (micro / "cache").exists() or not list((micro / "cache").iterdir())


def test_without_vllm_the_backend_is_refused_with_the_way_out(micro, monkeypatch):
    monkeypatch.setattr(dume_exp.experiment.validate, "vllm_installed", lambda: False)
    with pytest.raises(ValueError, match=r"needs vLLM, which is not installed .*eval.backend=inmemory"):
        run_micro(micro, "run", *SERVABLE, "eval.backend=vllm")


def test_parity_sequences_take_each_domains_first_texts(tiny_tokenizer):
    texts = {"a": ["one two three four five", "x", "six seven eight"], "b": ["nine ten eleven"]}
    seqs = vllm_scoring.parity_sequences(tiny_tokenizer, texts, per_domain=2, max_tokens=3)
    expected = [tiny_tokenizer(t)["input_ids"][:3] for t in ("one two three four five", "six seven eight",
                                                              "nine ten eleven")]
    expected = [s for s in expected if len(s) >= 2]
    assert seqs == expected and all(len(s) <= 3 for s in seqs)
    with pytest.raises(ValueError, match="domain 'c'"):
        vllm_scoring.parity_sequences(tiny_tokenizer, {"c": [""]}, per_domain=1, max_tokens=3)
