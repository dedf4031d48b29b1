"""The training-free peers of DUME (nearest_centroid, mergekit_hidden, mergekit_cheap_embed) against independent
computations on tiny experts: hooked dense-expert MLP inputs, per-sequence forward passes, embedding indexing."""
import pytest
import torch

from dume_exp import moe_blocks, upcycle, weight_average
from dume_exp.method.gate_init import cheap_embed_weights, hidden_gate_weights, nearest_centroid_weights
from dume_exp.method.router_statistics import collect_statistics
from dume_exp.strategies import BuildContext, RouterConfig, build

from tests.helpers import make_experts

DOMAINS = ["code", "law", "math"]
LENGTHS = [[[9, 4, 6], [7, 7]], [[5, 8], [3, 9, 2]], [[6], [8, 1, 5]]]  # per domain, per batch: real tokens per row
PAD = 7  # a real vocabulary row, so ignoring the mask changes every result


def _padded_batches(lengths_per_batch, seed):
    """Right-padded batches whose rows have the given numbers of real tokens."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for lengths in lengths_per_batch:
        width = max(lengths)
        ids = torch.randint(10, 300, (len(lengths), width), generator=gen)
        mask = (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).long()
        batches.append({"input_ids": ids.masked_fill(mask == 0, PAD), "attention_mask": mask})
    return batches


@pytest.fixture(scope="module")
def setup():
    experts = make_experts(3, shared_backbone=True)  # expert d == the upcycled model forced to expert d
    calib = [_padded_batches(lengths, seed=20 + d) for d, lengths in enumerate(LENGTHS)]
    return experts, calib


def _ctx(experts, calib):
    return BuildContext(experts=experts, domains=DOMAINS, calibration_batches=lambda: calib,
                        training_batches=lambda: [b for bs in calib for b in bs], router=RouterConfig(top_k=1),
                        progress=False)


def _sequences(batches):
    """Each row's real tokens as its own ``[1, n]`` sequence (the batches are right-padded)."""
    return [ids[mask.bool()][None] for b in batches for ids, mask in zip(b["input_ids"], b["attention_mask"])]


def _hooked_means(expert, batches):
    """Mean MLP input per layer of a dense expert over the real tokens of ``batches``, ``[L, H]`` float64."""
    seen = {i: [] for i in range(expert.config.num_hidden_layers)}
    hooks = [layer.mlp.register_forward_pre_hook(lambda m, args, i=i: seen[i].append(args[0][0].double()))
             for i, layer in enumerate(expert.model.layers)]
    try:
        with torch.no_grad():
            for seq in _sequences(batches):
                expert(input_ids=seq)
    finally:
        for h in hooks:
            h.remove()
    return torch.stack([torch.cat(seen[i]).mean(0) for i in sorted(seen)])


def _last_token_gates(dense, batches_by_domain):
    """``[L, D, H]``: per domain, the normalised mean over sequences of each layer's input at the last token."""
    per_domain = []
    with torch.no_grad():
        for batches in batches_by_domain:
            states = [torch.stack(dense(input_ids=seq, output_hidden_states=True).hidden_states[:-1])[:, 0, -1]
                      for seq in _sequences(batches)]
            mean = torch.stack(states).double().mean(0)  # [L, H]
            per_domain.append(mean / mean.norm(dim=-1, keepdim=True))
    return torch.stack(per_domain, dim=1)


def _embedding_gates(embedding, batches_by_domain):
    """``[D, H]``: per domain, the normalised sum of the embedding rows of its real tokens, by indexing."""
    rows = []
    for batches in batches_by_domain:
        total = sum(embedding[b["input_ids"][b["attention_mask"].bool()]].double().sum(0) for b in batches)
        rows.append(total / total.norm())
    return torch.stack(rows)


def test_nearest_centroid_means_and_routing_are_the_nearest_centroid(setup):
    experts, calib = setup
    stats = collect_statistics(upcycle(experts), calib, expert_names=DOMAINS, progress=False)
    weights = nearest_centroid_weights(stats)
    hooked = torch.stack([_hooked_means(e, batches) for e, batches in zip(experts, calib)], dim=1)  # [L, D, H]
    torch.testing.assert_close(weights.weight, hooked, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights.bias, -0.5 * hooked.pow(2).sum(-1), rtol=1e-5, atol=1e-6)
    gen = torch.Generator().manual_seed(0)
    for means, w, b in zip(hooked, weights.weight, weights.bias):
        spread = torch.cdist(means, means).max()
        near = means[torch.randint(0, 3, (400,), generator=gen)]
        x = torch.cat([near + 0.4 * spread * torch.randn(near.shape, generator=gen, dtype=torch.float64),
                       means.mean(0) + spread * torch.randn(near.shape, generator=gen, dtype=torch.float64)])
        nearest = torch.cdist(x, means).argmin(1)
        assert torch.equal((x @ w.T + b).argmax(1), nearest)
        assert not torch.equal((x @ w.T).argmax(1), nearest)  # the bias matters on these points


def test_mergekit_hidden_is_the_normalised_mean_last_token_layer_input(setup):
    experts, calib = setup
    dense = weight_average(experts)
    weights, sequences, tokens = hidden_gate_weights(dense, calib, progress=False)
    torch.testing.assert_close(weights.weight, _last_token_gates(dense, calib), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights.weight.norm(dim=-1), torch.ones(2, 3, dtype=torch.float64))
    assert torch.equal(weights.bias, torch.zeros(2, 3, dtype=torch.float64))
    assert sequences == [5, 5, 4] and tokens == [sum(sum(b) for b in lengths) for lengths in LENGTHS]


def test_cheap_embed_is_the_normalised_sum_of_embedding_rows():
    experts = make_experts(3, shared_backbone=False)  # the averaged embedding differs from every expert's
    calib = [_padded_batches(lengths, seed=40 + d) for d, lengths in enumerate(LENGTHS)]
    averaged = torch.stack([e.get_input_embeddings().weight.detach() for e in experts]).mean(0)
    model = upcycle(experts)
    weights, tokens = cheap_embed_weights(model.get_input_embeddings().weight, calib, num_layers=2)
    want = _embedding_gates(averaged, calib)
    for layer in weights.weight:
        torch.testing.assert_close(layer, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(weights.bias, torch.zeros(2, 3, dtype=torch.float64))
    assert tokens == [sum(sum(b) for b in lengths) for lengths in LENGTHS]


def test_the_peers_build_through_the_registry_changing_only_the_routers(setup, monkeypatch):
    experts, calib = setup
    ctx = _ctx(experts, calib)
    stats, stats_cost, _ = ctx.statistics
    monkeypatch.setattr("dume_exp.strategies.base.collect_statistics", lambda *a, **k: pytest.fail("recollected"))
    candidates = {name: list(build(name, ctx)) for name in ("nearest_centroid", "mergekit_hidden", "mergekit_cheap_embed")}
    assert {name: [c.name for c in cs] for name, cs in candidates.items()} == {n: [n] for n in candidates}
    (centroid,), (hidden,), (cheap,) = candidates.values()
    assert [c.info["gate_mode"] for c in (centroid, hidden, cheap)] == ["nearest_centroid", "hidden", "cheap_embed"]
    real = sum(sum(sum(b) for b in lengths) for lengths in LENGTHS)
    assert centroid.cost.forward_tokens == stats_cost.forward_tokens == real
    assert hidden.cost.forward_tokens == real and cheap.cost.forward_tokens == 0
    assert centroid.cost.wall_s >= stats_cost.wall_s
    hooked = torch.stack([_hooked_means(e, batches) for e, batches in zip(experts, calib)], dim=1)
    expected = {
        "nearest_centroid": (hooked, -0.5 * hooked.pow(2).sum(-1)),
        "mergekit_hidden": (_last_token_gates(weight_average(experts), calib), torch.zeros(2, 3)),
        "mergekit_cheap_embed": (_embedding_gates(experts[0].get_input_embeddings().weight.detach(), calib)
                                 .expand(2, -1, -1), torch.zeros(2, 3)),
    }
    reference = ctx.upcycled().state_dict()
    for name, (weight, bias) in expected.items():
        model = candidates[name][0].model
        got_w = torch.stack([b.router.weight.detach() for b in moe_blocks(model)])
        got_b = torch.stack([b.router.bias.detach() for b in moe_blocks(model)])
        torch.testing.assert_close(got_w, weight.float(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got_b, bias.float(), rtol=1e-5, atol=1e-5)
        state = model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in reference.items() if ".router." not in k), name
        assert model.config.dume_provenance["router"]["method"] == "training-free"
