"""The persistent statistics store: keyed by what determines the statistics, reused without forward passes."""
import pytest
import torch

import dume_exp.method.statistics_store as store_mod
from dume_exp import RouterStatistics, collect_statistics, moe_blocks, upcycle
from dume_exp.method.statistics_store import StatisticsStore

from tests.helpers import make_experts, random_batches


@pytest.fixture
def setup(tmp_path):
    moe = upcycle(make_experts(3, shared_backbone=False))
    batches = [random_batches(1, 2, 12, seed=30 + d) for d in range(3)]
    return moe, batches, StatisticsStore(tmp_path / "store")


def _no_forward(monkeypatch):
    monkeypatch.setattr(store_mod, "collect_statistics", lambda *a, **k: pytest.fail("ran a statistics pass"))


def test_second_request_loads_identical_statistics(setup, monkeypatch):
    moe, batches, store = setup
    names = ["a", "b", "c"]
    first, report = store.statistics(moe, batches, 16, names, progress=False)
    assert report["collected"] == names and report["loaded"] == []
    direct = collect_statistics(moe, batches, 16, expert_names=names, progress=False)
    assert torch.equal(first.gram, direct.gram) and torch.equal(first.sums, direct.sums)
    _no_forward(monkeypatch)
    for block in moe_blocks(moe):  # routers do not enter the key: forced routing ignores them
        torch.nn.init.normal_(block.router.weight)
    again, report = store.statistics(moe, batches, 16, names, progress=False)
    assert report["loaded"] == names and report["wall_s"] > 0  # the original pass's cost is still reported
    assert torch.equal(again.gram, first.gram)


def test_key_tracks_backbone_expert_data_and_length(setup):
    moe, batches, store = setup
    base = store.keys(moe, batches, 16)
    assert len(set(base)) == 3
    assert store.keys(moe, batches, 8) != base and set(store.keys(moe, batches, 8)).isdisjoint(base)
    assert set(store.keys(moe, batches, 16, bf16_autocast=True)).isdisjoint(base)
    with torch.no_grad():
        moe_blocks(moe)[1].experts[2].down_proj.weight.add_(1e-3)
    changed = store.keys(moe, batches, 16)
    assert changed[:2] == base[:2] and changed[2] != base[2]  # only expert 2's entry is invalidated
    other_data = [batches[0], random_batches(1, 2, 12, seed=99), batches[2]]
    assert store.keys(moe, other_data, 16)[1] != changed[1]
    with torch.no_grad():
        moe.model.norm.weight.add_(1e-3)
    assert set(store.keys(moe, batches, 16)).isdisjoint(changed)  # a new backbone invalidates every expert


def test_only_missing_experts_are_collected(setup, monkeypatch):
    moe, batches, store = setup
    store.statistics(moe, batches[:1] + batches[1:], 16, ["a", "b", "c"], progress=False)
    with torch.no_grad():
        moe_blocks(moe)[0].experts[1].up_proj.weight.mul_(1.01)
    calls = []
    real = store_mod.collect_statistics
    monkeypatch.setattr(store_mod, "collect_statistics", lambda *a, **k: calls.append(k["experts"]) or real(*a, **k))
    stats, report = store.statistics(moe, batches, 16, ["a", "b", "c"], progress=False)
    assert calls == [[1]] and report["collected"] == ["b"] and report["loaded"] == ["a", "c"]
    fresh = collect_statistics(moe, batches, 16, progress=False)
    assert torch.allclose(stats.gram, fresh.gram, rtol=1e-12, atol=0)
    joined = RouterStatistics.concat([stats.select([0]), stats.select([2])])
    assert joined.expert_names == ["a", "c"] and torch.equal(joined.gram, stats.select([0, 2]).gram)
    with pytest.raises(ValueError, match="distinct experts"):
        RouterStatistics.concat([stats.select([0]), stats.select([0])])
