"""MoE block: oracle routing equals the dense expert; sparse dispatch equals the dense reference."""
import pytest
import torch

from dume_exp import dispatch_mode, force_expert, moe_blocks, reset_routing_counts, routing_counts, set_routing, upcycle
from dume_exp.method.upcycle import decoder_layers

from tests.helpers import make_experts, random_batches


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_forced_expert_equals_dense_expert(family):
    experts = make_experts(3, family=family, shared_backbone=True)
    moe = upcycle(experts)
    ids = random_batches(1, 2, 16)[0]["input_ids"]
    with torch.no_grad():
        for d, expert in enumerate(experts):
            with force_expert(moe, d):
                got = moe(input_ids=ids).logits
            want = expert(input_ids=ids).logits
            assert (got - want).abs().max().item() <= 1e-5
    # The forced expert is restored on exit; the routed model differs from at least one expert.
    assert all(b.forced_expert is None for b in moe_blocks(moe))


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_sparse_dispatch_equals_dense_reference(k):
    moe = upcycle(make_experts(4, shared_backbone=False), top_k=k, temperature=0.7)
    for block in moe_blocks(moe):  # routers with a spread of logits so every expert gets tokens
        torch.nn.init.normal_(block.router.weight, std=1.0)
    ids = random_batches(1, 3, 20)[0]["input_ids"]
    with torch.no_grad():
        reset_routing_counts(moe)
        sparse = moe(input_ids=ids).logits
        counts = routing_counts(moe)
        with dispatch_mode(moe, "dense"):
            dense = moe(input_ids=ids).logits
    assert (sparse - dense).abs().max().item() <= 1e-5
    assert counts.shape == (2, 4)
    assert counts.sum(dim=1).tolist() == [3 * 20 * k] * 2
    if k == 1:
        assert (counts > 0).sum().item() >= 6  # routing genuinely spread over experts


def test_sparse_dispatch_runs_each_expert_on_its_tokens_only():
    moe = upcycle(make_experts(4), top_k=1)
    block = moe_blocks(moe)[0]
    seen = []
    for expert in block.experts:
        expert.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
    ids = random_batches(1, 2, 10)[0]["input_ids"]
    reset_routing_counts(moe)
    with torch.no_grad():
        moe(input_ids=ids)
    assert sum(seen) == 20  # each of the 20 tokens went through exactly one expert
    assert sorted(seen) == sorted(c for c in routing_counts(moe)[0].tolist() if c > 0)


def test_routing_knobs_are_validated():
    moe = upcycle(make_experts(2))
    with pytest.raises(ValueError, match="top_k must be in"):
        set_routing(moe, top_k=3)
    with pytest.raises(ValueError, match="temperature"):
        set_routing(moe, temperature=0.0)
    with pytest.raises(ValueError, match="out of range"):
        with force_expert(moe, 2):
            pass
    with pytest.raises(ValueError, match="no MoE blocks"):
        with force_expert(make_experts(1)[0], 0):
            pass


def test_upcycle_layout_and_averaging():
    experts = make_experts(3, shared_backbone=False)
    moe = upcycle(experts, top_k=2, temperature=2.0)
    assert isinstance(moe, type(experts[0])) and type(moe).stock_class is type(experts[0])
    assert moe.config.model_type == "dume_llama" and moe.config.dume_moe == {"num_experts": 3, "top_k": 2, "temperature": 2.0}
    assert moe.lm_head.weight is moe.model.embed_tokens.weight  # tied weights stay tied
    for i, layer in enumerate(decoder_layers(moe)):
        block = layer.mlp
        assert len(block.experts) == 3 and block.top_k == 2 and block.temperature == 2.0
        assert block.router.weight.shape == (3, 32) and block.router.bias.shape == (3,)
        for d, e in enumerate(experts):
            src = decoder_layers(e)[i].mlp
            assert torch.equal(block.experts[d].up_proj.weight, src.up_proj.weight)
            assert block.experts[d].up_proj.weight.data_ptr() != src.up_proj.weight.data_ptr()
        q = torch.stack([decoder_layers(e)[i].self_attn.q_proj.weight for e in experts]).mean(0)
        assert torch.allclose(layer.self_attn.q_proj.weight, q, atol=1e-7)
    emb = torch.stack([e.model.embed_tokens.weight for e in experts]).mean(0)
    assert torch.allclose(moe.model.embed_tokens.weight, emb, atol=1e-7)
    # Seeded router init: same seed, same routers; another seed, other routers.
    again, other = upcycle(experts, seed=0), upcycle(experts, seed=1)
    r0 = moe_blocks(moe)[1].router.weight
    assert torch.equal(r0, moe_blocks(again)[1].router.weight)
    assert not torch.equal(r0, moe_blocks(other)[1].router.weight)


def test_top1_router_gets_a_straight_through_gradient_without_changing_the_forward():
    moe = upcycle(make_experts(3, shared_backbone=False), top_k=1)
    ids = random_batches(1, 2, 12)[0]["input_ids"]
    with torch.no_grad():
        ref = moe(input_ids=ids).logits
    for p in moe.parameters():
        p.requires_grad_(False)
    routers = [b.router.weight for b in moe_blocks(moe)]
    for w in routers:
        w.requires_grad_(True)
    out = moe(input_ids=ids).logits
    assert torch.equal(out, ref)  # the weight of the kept expert is exactly 1 in the forward pass
    out.logsumexp(-1).mean().backward()
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in routers)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_sparse_dispatch_gradients_equal_the_dense_reference(k):
    """The gather-only backward of sparse dispatch gives autograd's gradients of the dense algorithm."""
    moe = upcycle(make_experts(3, shared_backbone=False), top_k=k).double()
    for block in moe_blocks(moe):
        torch.nn.init.normal_(block.router.weight, std=1.0)
    ids = random_batches(1, 2, 12)[0]["input_ids"]
    grads = {}
    for mode in ("sparse", "dense"):
        moe.zero_grad(set_to_none=True)
        with dispatch_mode(moe, mode):
            moe(input_ids=ids).logits.logsumexp(-1).mean().backward()
        grads[mode] = {n: p.grad.clone() for n, p in moe.named_parameters() if p.grad is not None}
    assert grads["sparse"].keys() == grads["dense"].keys()
    assert any("router" in n for n in grads["sparse"]) and any("embed" in n for n in grads["sparse"])
    for name, g in grads["sparse"].items():
        torch.testing.assert_close(g, grads["dense"][name], rtol=1e-9, atol=1e-12, msg=name)
