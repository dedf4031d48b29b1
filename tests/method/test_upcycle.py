"""MoErging: mismatch errors, and the merged model keeps working as a stock transformers model."""
import json

import pytest
import torch

from dume_exp import collect_statistics, fit_routers, load_upcycled, moe_blocks, upcycle, weight_average

from tests.helpers import make_experts, random_batches, tiny_model


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"vocab_size": 320}, "config.vocab_size"),
        ({"num_hidden_layers": 3}, "config.num_hidden_layers"),
        ({"intermediate_size": 48}, "config.intermediate_size"),
        ({"rope_theta": 500.0}, "config.rope"),
    ],
)
def test_mismatched_experts_name_the_field(overrides, field):
    a, b = tiny_model(), tiny_model(**overrides)
    with pytest.raises(ValueError, match=f"{field}.*differs") as err:
        upcycle([a, b], vocab="strict")
    if "vocab_size" in overrides:
        assert "(300 vs 320)" in str(err.value)


def test_mismatched_model_type_and_shapes():
    with pytest.raises(ValueError, match="model class differs.*LlamaForCausalLM.*Qwen2ForCausalLM"):
        upcycle([tiny_model("llama"), tiny_model("qwen2")])
    a, b = tiny_model(), tiny_model()
    b.model.layers[0].mlp.up_proj = torch.nn.Linear(32, 65, bias=False)
    with pytest.raises(ValueError, match=r"parameter model.layers.0.mlp.up_proj.weight shape differs \(\(64, 32\) vs \(65, 32\)\)"):
        upcycle([a, b])
    with pytest.raises(ValueError, match="at least one expert"):
        upcycle([])
    with pytest.raises(ValueError, match="already an upcycled MoE"):
        upcycle([upcycle([a])])


def test_weight_average_is_the_parameter_mean():
    experts = make_experts(3, shared_backbone=False)
    avg = weight_average(experts)
    assert not moe_blocks(avg)
    for name, p in avg.named_parameters():
        want = torch.stack([dict(e.named_parameters())[name] for e in experts]).mean(0)
        assert torch.allclose(p, want, atol=1e-7), name


@pytest.fixture(scope="module")
def fitted_moe():
    moe = upcycle(make_experts(3, shared_backbone=False), top_k=2, temperature=0.5)
    stats = collect_statistics(moe, [random_batches(1, 2, 16, seed=s) for s in range(3)], progress=False)
    fit_routers(moe, stats, lam=1e-2)
    return moe


def test_generate_and_save_pretrained_round_trip(fitted_moe, tmp_path):
    ids = random_batches(1, 2, 8, seed=7)[0]["input_ids"]
    out = fitted_moe.generate(input_ids=ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 14)
    fitted_moe.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["dume_moe"] == {"num_experts": 3, "top_k": 2, "temperature": 0.5}
    back = load_upcycled(tmp_path)
    assert type(back) is type(fitted_moe)
    assert back.lm_head.weight is back.model.embed_tokens.weight
    with torch.no_grad():
        assert torch.equal(back(input_ids=ids).logits, fitted_moe(input_ids=ids).logits)
    assert torch.equal(back.generate(input_ids=ids, max_new_tokens=6, do_sample=False, pad_token_id=0), out)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_upcycled(tmp_path / "nowhere")


def test_lm_eval_hflm_scores_the_in_memory_moe(fitted_moe, tiny_tokenizer, tmp_path):
    """lm-eval's HFLM on the in-memory MoE: rolling log-likelihood of 2 local documents (BOS-prefixed, as HFLM
    does) equals a direct forward pass."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    docs = ["The quick brown fox jumps over the lazy dog.", "def f(x):\n    return x + 1"]
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    task = {
        "task": "two_docs", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test", "output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{text}}",
        "metric_list": [{"metric": "byte_perplexity", "aggregation": "weighted_perplexity", "higher_is_better": False}],
    }
    lm = HFLM(pretrained=fitted_moe, tokenizer=tiny_tokenizer, batch_size=2, max_length=64)
    res = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=TaskManager(include_defaults=False),
                                  bootstrap_iters=0, num_fewshot=0)
    got = res["results"]["two_docs"]["byte_perplexity,none"]

    total_logprob, total_bytes = 0.0, 0
    with torch.no_grad():
        for d in docs:
            ids = [tiny_tokenizer.bos_token_id] + tiny_tokenizer(d, add_special_tokens=False)["input_ids"]
            logp = torch.log_softmax(fitted_moe(input_ids=torch.tensor([ids])).logits[0, :-1].double(), -1)
            total_logprob += logp.gather(1, torch.tensor(ids[1:])[:, None]).sum().item()
            total_bytes += len(d.encode())
    want = float(torch.exp(torch.tensor(-total_logprob / total_bytes)))
    assert abs(got - want) / want <= 1e-4
