"""Strategies and router training on tiny random experts."""
import math

import pytest
import torch

from dume_exp import moe_blocks
from dume_exp.strategies.router_training import RouterTrainingConfig, load_balance_loss, lr_factor, train_routers
from dume_exp.strategies import STRATEGIES, BuildContext, RouterConfig, build

from tests.helpers import make_experts, random_batches


def _ctx(steps=4, **training):
    experts = make_experts(2, shared_backbone=False)
    calib = [random_batches(2, 2, 16, seed=10 + d) for d in range(2)]
    return BuildContext(
        experts=experts, domains=["code", "law"],
        calibration_batches=lambda: calib,
        training_batches=lambda: [b for pair in zip(*calib) for b in pair],
        router=RouterConfig(top_k=1, lam=1e-2),
        training=RouterTrainingConfig(steps=steps, lr=1e-2, warmup_steps=2, **training),
        progress=False,
    )


def test_every_strategy_builds_its_candidates(tmp_path):
    ctx = _ctx()
    with pytest.raises(ValueError, match="experts.base"):
        build("base_model", ctx)
    ctx.experts[0].save_pretrained(tmp_path / "base")
    ctx.base = str(tmp_path / "base")
    names = {name: [c.name for c in build(name, ctx)] for name in STRATEGIES}
    assert names == {
        "dense_expert": ["expert:code", "expert:law"], "base_model": ["base"], "weight_average": ["weight_average"],
        "oracle": ["oracle"], "random_routing": ["random_routing"], "nearest_centroid": ["nearest_centroid"],
        "mergekit_hidden": ["mergekit_hidden"], "mergekit_cheap_embed": ["mergekit_cheap_embed"], "dume": ["dume"],
        "btx": ["btx"], "dume_plus": ["dume_plus"],
    }
    with pytest.raises(ValueError, match="Unknown strategy 'dumee'"):
        build("dumee", ctx)


def test_dume_and_dume_plus_costs_and_oracle_routing():
    ctx = _ctx(steps=3)
    (dume,) = build("dume", ctx)
    (plus,) = build("dume_plus", ctx)
    (btx,) = build("btx", ctx)
    assert dume.cost.forward_tokens == 2 * 2 * 2 * 16 and dume.cost.backward_tokens == 0
    assert btx.cost.backward_tokens == 3 * 2 * 16 and btx.cost.forward_tokens == btx.cost.backward_tokens
    assert plus.cost.forward_tokens == dume.cost.forward_tokens + 3 * 2 * 16
    r_dume, r_plus = moe_blocks(dume.model)[0].router.weight, moe_blocks(plus.model)[0].router.weight
    assert not torch.equal(r_dume, r_plus)  # DUME+ moved away from its ridge initialisation
    (oracle,) = build("oracle", ctx)
    with oracle.route_domain(oracle.model, "law"):
        assert all(b.forced_expert == 1 for b in moe_blocks(oracle.model))
    assert all(b.forced_expert is None for b in moe_blocks(oracle.model))


@pytest.mark.parametrize("gate_proj", [False, True])
def test_router_training_touches_only_routers(gate_proj):
    ctx = _ctx()
    model = ctx.upcycled()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = ctx.training_batches()
    losses = []
    for _ in range(2):
        cost = train_routers(model, batches, RouterTrainingConfig(steps=8, lr=3e-2, warmup_steps=1,
                                                                  train_gate_proj=gate_proj), progress=False)
        losses.append(cost.final_loss)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".router." in k or (gate_proj and ".gate_proj." in k) for k in changed)
    assert any(".gate_proj." in k for k in changed) == gate_proj
    assert losses[1] < losses[0]
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_router_training_is_cached_by_start_model_data_and_config(tmp_path, monkeypatch):
    from dume_exp.strategies.router_training import train_routers_cached

    ctx = _ctx()
    batches = ctx.training_batches()
    cfg = RouterTrainingConfig(steps=3, lr=1e-2, warmup_steps=1)
    first = ctx.upcycled()
    cost, cached = train_routers_cached(first, batches, cfg, progress=False, root=tmp_path)
    assert not cached and cost.tokens == 3 * 2 * 16
    monkeypatch.setattr("dume_exp.strategies.router_training.train_routers", lambda *a, **k: pytest.fail("retrained"))
    second = ctx.upcycled()
    again, cached = train_routers_cached(second, batches, cfg, progress=False, root=tmp_path)
    assert cached and again == cost
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    with pytest.raises(pytest.fail.Exception, match="retrained"):  # another configuration is another entry
        train_routers_cached(ctx.upcycled(), batches, RouterTrainingConfig(steps=4, lr=1e-2, warmup_steps=1),
                             progress=False, root=tmp_path)


def test_router_training_cache_key_leaves_out_the_batch_shape(tmp_path):
    """``batch_size`` / ``seq_len`` shape the batches (which the data fingerprint covers): a training's key is the
    one from before they joined the config, so the trainings cached then are found."""
    from dume_exp.strategies.router_training import ROUTER_TRAINING_VERSION, train_routers_cached
    from dume_exp.utils.cache import recipe_key
    from dume_exp.utils.fingerprints import batches_fingerprint, tensor_fingerprint

    ctx = _ctx()
    batches = ctx.training_batches()
    start = ctx.upcycled()
    old_config = {"steps": 3, "lr": 1e-2, "warmup_steps": 1, "min_lr_ratio": 0.1, "weight_decay": 0.0,
                  "grad_clip": 1.0, "load_balance_alpha": 0.0, "train_gate_proj": False, "bf16": False}
    key = recipe_key({"model": tensor_fingerprint(start.state_dict().values()), "data": batches_fingerprint(batches),
                      "config": old_config, "code": ROUTER_TRAINING_VERSION}, length=24)
    cost, cached = train_routers_cached(start, batches, RouterTrainingConfig(steps=3, lr=1e-2, warmup_steps=1),
                                        progress=False, root=tmp_path)
    assert not cached and [p.name for p in tmp_path.iterdir()] == [f"{key}.safetensors"]
    reshaped = RouterTrainingConfig(steps=3, lr=1e-2, warmup_steps=1, batch_size=2, seq_len=16)
    assert train_routers_cached(ctx.upcycled(), batches, reshaped, progress=False, root=tmp_path) == (cost, True)


def test_lr_schedule_and_load_balance_loss():
    cfg = RouterTrainingConfig(steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1) and lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0) and lr_factor(110, cfg) == pytest.approx(0.1)
    assert lr_factor(60, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    block = moe_blocks(_ctx().upcycled())[0]
    uniform = torch.zeros(8, 2)
    uniform[:4, 0], uniform[4:, 1] = 1e-3, 1e-3  # half the tokens to each expert, probabilities ≈ 1/2
    assert load_balance_loss([uniform], [block]).item() == pytest.approx(1.0, abs=1e-3)
    collapsed = torch.tensor([[5.0, -5.0]] * 8)
    assert load_balance_loss([collapsed], [block]).item() == pytest.approx(2 * torch.sigmoid(torch.tensor(10.0)).item(), rel=1e-5)


@pytest.mark.parametrize("damage, problem", [
    (lambda p: p.write_bytes(p.read_bytes()[:-4] + bytes(4)), "sha256 differs"),
    (lambda p: p.write_bytes(b""), "unreadable"),
], ids=["flipped-bytes", "zero-length"])
def test_a_corrupt_router_training_entry_is_named_moved_aside_and_retrained(tmp_path, damage, problem):
    from dume_exp.strategies.router_training import train_routers_cached

    ctx = _ctx()
    batches, cfg = ctx.training_batches(), RouterTrainingConfig(steps=2, lr=1e-2, warmup_steps=1)
    first = ctx.upcycled()
    train_routers_cached(first, batches, cfg, progress=False, root=tmp_path)
    (entry,) = tmp_path.glob("*.safetensors")
    damage(entry)
    second = ctx.upcycled()
    with pytest.warns(UserWarning, match=problem):
        _, cached = train_routers_cached(second, batches, cfg, progress=False, root=tmp_path)
    assert not cached and len(list(tmp_path.glob("*.corrupt-*"))) == 1
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    _, cached = train_routers_cached(ctx.upcycled(), batches, cfg, progress=False, root=tmp_path)
    assert cached  # the rewritten entry verifies
