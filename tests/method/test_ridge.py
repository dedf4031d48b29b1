"""Router statistics and the closed-form ridge solve, checked against independent numpy computations."""
import numpy as np
import pytest
import torch

from dume_exp import (
    RidgeSolver, RouterStatistics, collect_statistics, fit_routers, force_expert, moe_blocks,
    reset_routing_counts, routing_counts, upcycle,
)

from tests.helpers import make_experts, random_batches


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _captured_inputs(moe, batches, d):
    """MoE-block inputs of the non-padding tokens, captured by forward hooks under oracle routing."""
    captured = {i: [] for i in range(len(moe_blocks(moe)))}
    handles = []
    for i, block in enumerate(moe_blocks(moe)):
        handles.append(block.register_forward_pre_hook(lambda m, a, i=i: captured[i].append(a[0].detach().double())))
    masks = []
    with torch.no_grad(), force_expert(moe, d):
        for b in batches:
            moe(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
            masks.append(b["attention_mask"].reshape(-1).bool())
    for h in handles:
        h.remove()
    return {i: torch.cat([x.reshape(-1, x.shape[-1])[m] for x, m in zip(xs, masks)]).numpy() for i, xs in captured.items()}


def test_gcv_and_per_layer_lambda_match_explicit_hat_matrix():
    moe = upcycle(make_experts(3, shared_backbone=False))
    batches = [random_batches(2, 2, 10, seed=20 + d) for d in range(3)]
    solver = RidgeSolver(collect_statistics(moe, batches, progress=False))
    grid = torch.tensor([1e-3, 1e-1, 10.0, 1e3])
    gcv = solver.gcv(grid).numpy()
    for layer in range(2):
        xs = [_captured_inputs(moe, batches[d], d)[layer] for d in range(3)]
        X = np.concatenate([np.hstack([x, np.ones((len(x), 1))]) for x in xs])
        Y = np.concatenate([np.eye(3)[[d] * len(x)] for d, x in enumerate(xs)])
        n = len(X)
        for j, lam in enumerate(grid.tolist()):
            hat = X @ np.linalg.solve(X.T @ X + lam * np.eye(X.shape[1]), X.T)
            want = n * ((Y - hat @ Y) ** 2).sum() / (n - np.trace(hat)) ** 2
            assert gcv[layer, j] == pytest.approx(want, rel=1e-6)
    chosen = solver.select_lambda(grid)
    assert chosen.tolist() == [grid[i].item() for i in gcv.argmin(axis=1)]
    both = solver.coefficients(chosen)
    for layer in range(2):
        assert torch.allclose(both[layer], solver.coefficients(chosen[layer].item())[layer], rtol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("normalize", [False, True])
def test_fit_routers_equals_numpy_ridge(normalize, bias):
    moe = upcycle(make_experts(3, shared_backbone=False))
    batches = [random_batches(2, 3, 12, seed=10 + d) for d in range(3)]
    stats = collect_statistics(moe, batches, progress=False)
    lam = 0.37
    weights = fit_routers(moe, stats, lam=lam, normalize=normalize, bias=bias)
    for layer, block in enumerate(moe_blocks(moe)):
        xs = [_captured_inputs(moe, batches[d], d)[layer] for d in range(3)]
        X = np.concatenate([np.hstack([x, np.ones((len(x), 1))]) if bias else x for x in xs])
        Y = np.concatenate([np.eye(3)[[d] * len(x)] for d, x in enumerate(xs)])
        W = np.linalg.solve(X.T @ X + lam * np.eye(X.shape[1]), X.T @ Y)  # [H+1, D] ([H, D] without a bias)
        w, b = (W[:-1], W[-1]) if bias else (W, np.zeros(3))
        if normalize:
            n = np.linalg.norm(w, axis=0)
            w, b = w / n, b / n
        assert _rel(weights.weight[layer].numpy(), w.T) <= 1e-6
        if bias:
            assert _rel(weights.bias[layer].numpy(), b) <= 1e-6
        else:
            assert not weights.bias[layer].any() and not block.router.bias.detach().any()
        assert _rel(block.router.weight.detach().numpy(), w.T) <= 1e-6
    assert stats.token_counts.tolist() == [72, 72, 72]
    assert moe.config.dume_provenance["router"]["bias"] is bias
    with pytest.raises(ValueError, match=f"RidgeSolver built with bias={bias}"):
        fit_routers(moe, RidgeSolver(stats, bias=bias), bias=not bias)


def _padded(seqs, batch_size, side):
    out = []
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i : i + batch_size]
        width = max(len(s) for s in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for r, s in enumerate(chunk):
            sl = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
            ids[r, sl], mask[r, sl] = s, 1
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-9), (torch.float32, 1e-6)])
def test_statistics_are_batch_invariant_and_additive(dtype, tol):
    """Padding side and batch size do not change the statistics: to 1e-9 with a float64 forward pass; an fp32
    forward pass differs between batch shapes at its own rounding level (~3e-8 measured), not in accumulation."""
    moe = upcycle(make_experts(2)).to(dtype)
    gen = torch.Generator().manual_seed(3)
    seqs = [torch.randint(3, 300, (int(n),), generator=gen) for n in torch.randint(4, 30, (16,), generator=gen)]
    halves = [seqs[:8], seqs[8:]]
    ref = collect_statistics(moe, [_padded(h, 1, "right") for h in halves], max_tokens_per_sequence=20, progress=False)
    for side in ("right", "left"):
        got = collect_statistics(moe, [_padded(h, 8, side) for h in halves], max_tokens_per_sequence=20, progress=False)
        assert _rel(got.gram, ref.gram) <= tol
        assert _rel(got.sums, ref.sums) <= tol
    assert ref.token_counts.tolist() == [sum(min(len(s), 20) for s in h) for h in halves]
    # Two separate collections added equal one joint collection.
    a = collect_statistics(moe, [_padded(h[:5], 4, "right") for h in halves], max_tokens_per_sequence=20, progress=False)
    b = collect_statistics(moe, [_padded(h[5:], 4, "left") for h in halves], max_tokens_per_sequence=20, progress=False)
    joint = a + b
    assert _rel(joint.gram, ref.gram) <= tol and _rel(joint.sums, ref.sums) <= tol


def test_bf16_autocast_statistics_stay_close_to_fp32():
    moe = upcycle(make_experts(2))
    batches = [random_batches(1, 2, 12, seed=s) for s in (1, 2)]
    exact = collect_statistics(moe, batches, progress=False)
    fast = collect_statistics(moe, batches, progress=False, bf16_autocast=True)
    assert 0 < _rel(fast.gram, exact.gram) < 5e-2 and torch.equal(fast.token_counts, exact.token_counts)


def test_planted_domains_are_routed_to_their_expert():
    """Two domains drawing tokens from disjoint vocabulary ranges whose embeddings carry a planted domain
    direction (as a trained LM's embeddings cluster by domain): DUME routes ≥ 99% of held-out tokens of each
    domain to its expert in every layer, where the randomly initialised routers do not."""
    moe = upcycle(make_experts(2, shared_backbone=False))
    ranges = [(3, 40), (150, 190)]
    with torch.no_grad():
        emb = moe.model.embed_tokens.weight
        u = torch.randn(emb.shape[1], generator=torch.Generator().manual_seed(0))
        u *= 0.5 * emb.norm(dim=1).mean() / u.norm()
        emb[slice(*ranges[0])] += u
        emb[slice(*ranges[1])] -= u

    def domain(d, seed, n=4):
        gen = torch.Generator().manual_seed(seed)
        return [{"input_ids": torch.randint(*ranges[d], (4, 24), generator=gen)} for _ in range(n)]

    def correct_share(d):
        reset_routing_counts(moe)
        with torch.no_grad():
            for batch in domain(d, 100 + d, n=2):
                moe(**batch)
        counts = routing_counts(moe).double()
        return counts[:, d] / counts.sum(dim=1)

    assert min(correct_share(d).min().item() for d in range(2)) < 0.9  # random routers
    stats = collect_statistics(moe, [domain(0, 1), domain(1, 2)], progress=False)
    fit_routers(moe, stats, lam=1e-2)
    for d in range(2):
        share = correct_share(d)
        assert share.min().item() >= 0.99, share


def test_ridge_solver_reuses_one_factorisation(monkeypatch):
    moe = upcycle(make_experts(2))
    stats = collect_statistics(moe, [random_batches(1, 4, 16, seed=s) for s in (1, 2)], progress=False)
    solver = RidgeSolver(stats)
    monkeypatch.setattr(torch.linalg, "eigh", lambda *a, **k: pytest.fail("refactorised A"))
    A = stats.gram.sum(1).numpy()
    b = stats.sums.transpose(1, 2).numpy()
    for lam in (1e-4, 1e-2, 1.0, 10.0):
        want = np.stack([np.linalg.solve(A[l] + lam * np.eye(A.shape[-1]), b[l]) for l in range(A.shape[0])])
        assert _rel(solver.coefficients(lam).numpy(), want) <= 1e-6
        fit_routers(moe, solver, lam=lam)


def test_bad_lambda_and_empty_calibration_are_rejected():
    moe = upcycle(make_experts(2))
    few = [random_batches(1, 1, 5, seed=s) for s in (1, 2)]  # 10 tokens < H + 1 = 33: A is singular
    stats = collect_statistics(moe, few, progress=False)
    with pytest.raises(ValueError, match="singular"):
        fit_routers(moe, stats, lam=0.0)
    fit_routers(moe, stats, lam=1e-2)  # the ridge penalty makes it solvable
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="λ must be"):
            fit_routers(moe, stats, lam=bad)
    empty = {"input_ids": torch.zeros(2, 4, dtype=torch.long), "attention_mask": torch.zeros(2, 4, dtype=torch.long)}
    with pytest.raises(ValueError, match="No calibration tokens for expert"):
        collect_statistics(moe, [few[0], [empty]], progress=False)
    with pytest.raises(ValueError, match="2 experts"):
        collect_statistics(moe, [few[0]], progress=False)
    with pytest.raises(ValueError, match="do not fit the model"):
        fit_routers(upcycle(make_experts(3)), stats)


def test_statistics_save_load_and_select(tmp_path):
    moe = upcycle(make_experts(3))
    stats = collect_statistics(moe, [random_batches(1, 2, 8, seed=s) for s in range(3)],
                               expert_names=["code", "math", "law"], progress=False)
    path = tmp_path / "stats.safetensors"
    stats.save(path, metadata={"note": "test"})
    back = RouterStatistics.load(path)
    assert back.expert_names == ["code", "math", "law"]
    assert torch.equal(back.gram, stats.gram) and torch.equal(back.sums, stats.sums)
    assert [p.name for p in tmp_path.iterdir()] == ["stats.safetensors"]  # no temp file left behind
    sub = stats.select(["law", 0])
    assert sub.expert_names == ["law", "code"]
    assert torch.equal(sub.gram[:, 0], stats.gram[:, 2]) and torch.equal(sub.sums[:, 1], stats.sums[:, 0])
    with pytest.raises(ValueError, match="Invalid expert selection"):
        stats.select([0, 0])
    with pytest.raises(ValueError, match="same layers and experts"):
        stats + sub
    with pytest.raises(FileNotFoundError, match="collect_statistics"):
        RouterStatistics.load(tmp_path / "missing.safetensors")
