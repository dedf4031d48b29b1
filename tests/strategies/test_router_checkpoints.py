"""Router-training checkpoints (``router_training.checkpoints``): snapshots of the one run, their cache entries, the
candidates scored at each, and the bf16 training path."""
import contextlib
import itertools
from dataclasses import replace

import pytest
import torch

from dume_exp.strategies import build
from dume_exp.strategies.router_training import (RouterTrainingConfig, router_training_steps, train_routers,
                                                 train_routers_cached, trainable_router_parameters)

from tests.helpers import compose_app
from tests.strategies.test_strategies import _ctx

TOKENS_PER_STEP = 2 * 16  # _ctx's training batches: 2 sequences of 16 tokens


def routers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if ".router." in n}


def stopped_after(model: torch.nn.Module, batches, cfg: RouterTrainingConfig, steps: int) -> dict[str, torch.Tensor]:
    """The routers of an independent training of ``cfg`` (its schedule) stopped after ``steps`` steps."""
    with contextlib.closing(router_training_steps(model, batches, replace(cfg, checkpoints=[]))) as loop:
        for _ in itertools.islice(loop, steps):
            pass
    return routers(model)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_a_checkpoint_is_the_run_stopped_there(bf16):
    ctx = _ctx()
    batches = ctx.training_batches()
    cfg = RouterTrainingConfig(steps=6, lr=1e-2, warmup_steps=2, bf16=bf16, checkpoints=[0, 2, 3, 6])
    model = ctx.upcycled()
    initial = routers(model)
    cost = train_routers(model, batches, cfg, progress=False)
    assert [c.step for c in cost.checkpoints] == [0, 2, 3, 6]
    assert [c.tokens for c in cost.checkpoints] == [c * TOKENS_PER_STEP for c in (0, 2, 3, 6)]
    walls = [c.wall_s for c in cost.checkpoints]
    assert walls[0] == 0.0 and walls == sorted(walls) and walls[-1] <= cost.wall_s
    assert all(torch.equal(cost.checkpoints[0].state[n], t) for n, t in initial.items())
    for ck in cost.checkpoints[1:]:
        reference = stopped_after(ctx.upcycled(), batches, cfg, ck.step)
        assert ck.state.keys() == reference.keys()
        assert all(torch.equal(ck.state[n], t) for n, t in reference.items()), f"checkpoint {ck.step}"
    assert all(torch.equal(cost.checkpoints[-1].state[n], t) for n, t in routers(model).items())
    assert not torch.equal(cost.checkpoints[1].state[next(iter(initial))], cost.checkpoints[2].state[next(iter(initial))])
    plain = ctx.upcycled()  # the snapshots do not change the training
    assert train_routers(plain, batches, replace(cfg, checkpoints=[]), progress=False).checkpoints == []
    assert all(torch.equal(routers(plain)[n], t) for n, t in routers(model).items())


def test_bf16_training_leaves_an_fp32_model_with_only_its_routers_changed():
    ctx = _ctx()
    model = ctx.upcycled()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_routers(model, ctx.training_batches(), RouterTrainingConfig(steps=4, lr=3e-2, warmup_steps=1, bf16=True),
                  progress=False)
    after = model.state_dict()
    assert all(v.dtype == before[k].dtype for k, v in after.items()) and next(model.parameters()).dtype == torch.float32
    changed = {k for k, v in after.items() if not torch.equal(v, before[k])}
    assert changed and all(".router." in k for k in changed)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_bf16_router_gradients_follow_the_fp32_ones():
    from dume_exp.strategies.router_training import bf16_training_copy

    ctx = _ctx()
    model = ctx.upcycled().train()
    params = trainable_router_parameters(model)
    batch = ctx.training_batches()[0]

    def grad(m: torch.nn.Module) -> torch.Tensor:
        for p in params:
            p.grad = None
        m(input_ids=batch["input_ids"], labels=batch["input_ids"], use_cache=False).loss.backward()
        return torch.cat([p.grad.flatten() for p in params])

    copy16 = bf16_training_copy(model, params)
    assert {p.dtype for n, p in copy16.named_parameters() if ".router." not in n} == {torch.bfloat16}
    assert all(p is q for p, q in zip(params, trainable_router_parameters(copy16)))  # shared, fp32
    reference, half = grad(model), grad(copy16)
    assert float(torch.nn.functional.cosine_similarity(reference, half, dim=0)) > 0.99


def test_checkpoints_come_back_from_the_cache(tmp_path, monkeypatch):
    ctx = _ctx()
    batches = ctx.training_batches()
    cfg = RouterTrainingConfig(steps=4, lr=1e-2, warmup_steps=1, checkpoints=[0, 2])
    first, cached = train_routers_cached(ctx.upcycled(), batches, cfg, progress=False, root=tmp_path)
    assert not cached
    monkeypatch.setattr("dume_exp.strategies.router_training.train_routers", lambda *a, **k: pytest.fail("retrained"))
    model = ctx.upcycled()
    again, cached = train_routers_cached(model, batches, cfg, progress=False, root=tmp_path)
    assert cached and again == first
    assert [(c.step, c.tokens, c.wall_s) for c in again.checkpoints] == [(c.step, c.tokens, c.wall_s)
                                                                         for c in first.checkpoints]
    for mine, theirs in zip(again.checkpoints, first.checkpoints):
        assert mine.state.keys() == theirs.state.keys()
        assert all(torch.equal(mine.state[n], theirs.state[n]) for n in mine.state)
    with pytest.raises(pytest.fail.Exception, match="retrained"):  # other checkpoints: another entry
        train_routers_cached(ctx.upcycled(), batches, replace(cfg, checkpoints=[0, 3]), progress=False, root=tmp_path)
    with pytest.raises(pytest.fail.Exception, match="retrained"):  # none: the entry of the plain training
        train_routers_cached(ctx.upcycled(), batches, replace(cfg, checkpoints=[]), progress=False, root=tmp_path)


def test_a_corrupt_checkpoint_entry_is_moved_aside_and_retrained(tmp_path):
    ctx = _ctx()
    batches, cfg = ctx.training_batches(), RouterTrainingConfig(steps=3, lr=1e-2, warmup_steps=1, checkpoints=[0, 1])
    first, _ = train_routers_cached(ctx.upcycled(), batches, cfg, progress=False, root=tmp_path)
    (entry,) = tmp_path.glob("*.safetensors")
    entry.write_bytes(entry.read_bytes()[:-4] + bytes(4))
    with pytest.warns(UserWarning, match="sha256 differs"):
        again, cached = train_routers_cached(ctx.upcycled(), batches, cfg, progress=False, root=tmp_path)
    assert not cached and len(list(tmp_path.glob("*.corrupt-*"))) == 1
    assert all(torch.equal(again.checkpoints[1].state[n], t) for n, t in first.checkpoints[1].state.items())


@pytest.mark.parametrize("checkpoints, names", [
    ([0, 2, 4], ["btx@0", "btx@2", "btx@4"]),  # the final model is the checkpoint at `steps`
    ([0, 2], ["btx@0", "btx@2", "btx"]),  # the final model follows as the plain row
], ids=["with-final", "without-final"])
def test_each_candidate_holds_its_checkpoint_routers_while_scored(checkpoints, names):
    ctx = _ctx(steps=4, checkpoints=checkpoints)
    reference = train_routers(ctx.upcycled(), ctx.training_batches(), ctx.training, progress=False)
    final_model = ctx.upcycled()
    train_routers(final_model, ctx.training_batches(), replace(ctx.training, checkpoints=[]), progress=False)
    final = routers(final_model)
    expected = {f"btx@{c.step}": c.state for c in reference.checkpoints} | {"btx": final}
    seen, models = [], set()
    for cand in build("btx", ctx):  # as the runner consumes them: one at a time
        seen.append(cand.name)
        models.add(id(cand.model))
        assert all(torch.equal(t, expected[cand.name][n]) for n, t in routers(cand.model).items()), cand.name
        step = cand.info.get("checkpoint", 4)
        assert cand.cost.forward_tokens == cand.cost.backward_tokens == step * TOKENS_PER_STEP
        assert cand.info["steps"] == 4 and cand.info["training"]["checkpoints"] == checkpoints
        if "checkpoint" in cand.info:
            assert cand.info["tokens"] == step * TOKENS_PER_STEP
        del cand
    assert seen == names and len(models) == 1  # one model, its routers swapped


def test_dume_plus_starts_from_the_dume_routers():
    ctx = _ctx(steps=2, checkpoints=[0, 1])
    (dume,) = build("dume", ctx)
    dume_routers, dume_tokens = routers(dume.model), dume.cost.forward_tokens
    names = []
    for cand in build("dume_plus", ctx):
        names.append(cand.name)
        if cand.name == "dume_plus@0":
            assert all(torch.equal(t, dume_routers[n]) for n, t in routers(cand.model).items())
            assert (cand.cost.forward_tokens, cand.cost.backward_tokens) == (dume_tokens, 0)
    assert names == ["dume_plus@0", "dume_plus@1", "dume_plus"]


def test_no_checkpoints_keep_the_plain_rows_and_records():
    ctx = _ctx(steps=2)
    (cand,) = build("btx", ctx)
    assert cand.name == "btx" and "checkpoints" not in cand.info["training"] and "checkpoint" not in cand.info


@pytest.mark.parametrize("checkpoints, problem", [
    ([0, 15, 10], "10 does not come after 15"),
    ([0, 10, 10], "10 does not come after 10"),
    ([-1, 10], "-1 is outside [0, steps=20]"),
    ([0, 25], "25 is outside [0, steps=20]"),
])
def test_bad_checkpoints_are_named_with_the_fix(checkpoints, problem):
    with pytest.raises(ValueError) as info:
        RouterTrainingConfig(steps=20, checkpoints=checkpoints)
    assert problem in str(info.value) and "in increasing order without repeats" in str(info.value)
    assert RouterTrainingConfig(steps=20, checkpoints=[0, 20]).checkpoints == [0, 20]


def test_the_sweep_config_and_the_cell_keys():
    from dume_exp.experiment.cells import cell_path, setting_versions

    cfg = compose_app("+experiment=clm", "+sweep=router_training")
    assert (cfg.router_training.steps, list(cfg.router_training.checkpoints)) == (200, [0, 25, 50, 100, 200])
    assert [s for s, on in cfg.strategy.items() if on] == ["dense_expert", "dume", "btx", "dume_plus"]
    assert cfg.results_dir == "results/sweeps/router_training"
    assert cell_path(cfg) != cell_path(compose_app("+experiment=clm", "+sweep=router_training",
                                                   "router_training.checkpoints=[]"))
    # bf16 router training (changed: a bf16 copy of the frozen model) keys its own cells, where it runs
    trained = compose_app("+experiment=clm", "router_training.bf16=true")
    assert setting_versions(trained) == {"router_training_bf16": 2}
    assert setting_versions(compose_app("+experiment=clm", "router_training.bf16=false")) == {}
    assert setting_versions(compose_app("+experiment=clm", "router_training.bf16=true", "strategy=[dense_expert,dume]")) == {}


@pytest.mark.slow
def test_the_app_scores_every_checkpoint_and_the_report_draws_the_curve(tmp_path, tiny_tokenizer):
    """``python -m dume_exp`` with checkpoints (the runner consumes the candidates one at a time), then the report
    on its cell: the table, ``router_training.md`` and the curve."""
    import json
    import subprocess
    import sys

    from tests.helpers import REPO, make_experts, run_app, tiny_model, write_micro_setup

    experts = make_experts(2, shared_backbone=True, vocab_size=len(tiny_tokenizer))
    write_micro_setup(tmp_path, experts, tiny_model(vocab_size=len(tiny_tokenizer)), tiny_tokenizer)
    proc = run_app(tmp_path, "strategy=[dense_expert,dume,btx,dume_plus]", "router_training.checkpoints=[0,1]",
                   "router_training.lr=0.5", "router_training.warmup_steps=0", "logger=none", "write_table=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    rows = {r["name"]: r for r in results["seeds"][0]["rows"]}
    assert list(rows) == ["expert:prose", "expert:code", "dume", "btx@0", "btx@1", "btx", "dume_plus@0", "dume_plus@1",
                          "dume_plus"]
    assert rows["dume_plus@0"]["scores"] == rows["dume"]["scores"]  # the ridge init is DUME's model
    assert rows["btx@0"]["cost"]["backward_tokens"] == 0 < rows["btx@1"]["cost"]["backward_tokens"]
    assert rows["btx@1"]["info"]["checkpoint"] == 1 and rows["btx"]["info"]["steps"] == 2
    assert rows["btx@1"]["scores"] != rows["btx@0"]["scores"]  # scored with its own routers (lr 0.5 moves them)
    cells = tmp_path / "results" / "clm" / "cells"
    report = subprocess.run([sys.executable, "-m", "dume_exp.report", str(cells), "--out", str(tmp_path / "sweep"),
                             "--figures", str(tmp_path / "figures"), "--logger", "none"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (tmp_path / "figures" / "router_training_clm.png").exists()
    assert "| btx@1 | 1 |" in (tmp_path / "sweep" / "router_training.md").read_text()
