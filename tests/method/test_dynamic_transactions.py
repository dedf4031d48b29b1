"""Expert updates are all-or-nothing: a failure at any step of add_expert / remove_expert leaves the model exactly as
it was (and a retry gives the fresh-model result); the CLI leaves the old or the new model folder, never a broken one."""
import copy
import os
import shutil
import signal
import traceback
from pathlib import Path

import pytest
import torch

import dume_exp.cli.dynamic as dynamic_cli
import dume_exp.method.dynamic as dynamic
import dume_exp.utils.folders as folders
import dume_exp.native.modeling_dume as modeling_dume
import dume_exp.method.ridge as ridge
from dume_exp import RouterStatistics, collect_statistics, fit_routers, load_upcycled, moe_blocks, upcycle

from tests.helpers import make_experts, random_batches

pytestmark = pytest.mark.filterwarnings("ignore:.*vocabulary rows")
DATA = [random_batches(1, 2, 10, seed=60 + d) for d in range(3)]
PADDING = 64  # the model's experts have extra vocabulary rows, so adding the third one truncates the vocabulary


class Injected(RuntimeError):
    pass


def _padded(model):
    out = copy.deepcopy(model)
    out.resize_token_embeddings(out.config.vocab_size + PADDING, mean_resizing=False)
    return out


@pytest.fixture(scope="module")
def setup():
    """Two padded experts merged into a fitted model, and a third (unpadded) expert to add."""
    experts = make_experts(3, shared_backbone=False)
    merged = [_padded(e) for e in experts[:2]]
    model = upcycle(merged, top_k=2, temperature=0.5)
    stats = collect_statistics(model, DATA[:2], 8, expert_names=["a", "b"], progress=False)
    fit_routers(model, stats)
    return model, stats, [*merged, experts[2]]


def _run(op: str, model, stats, experts) -> RouterStatistics:
    common = dict(max_tokens_per_sequence=8, progress=False)
    if op == "add-fast":
        return dynamic.add_expert(model, stats, experts[2], DATA[2], "c", **common)
    if op == "add-exact":
        return dynamic.add_expert(model, stats, experts[2], DATA[2], "c", mode="exact", existing_batches=DATA[:2],
                                  **common)
    if op == "remove-fast":
        return dynamic.remove_expert(model, stats, "a", removed_model=experts[0], **common)
    return dynamic.remove_expert(model, stats, 0, removed_model=experts[0], mode="exact",
                                 remaining_batches=DATA[1:2], **common)


def _snapshot(model) -> dict:
    """Everything an update touches: tensors (buffers included), config, expert modules, routers, routing."""
    blocks = moe_blocks(model)
    tensors = {**model.state_dict(), **{f"buffer:{k}": b for k, b in model.named_buffers()}}
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    return {
        "tensors": {k: v.detach().clone() for k, v in tensors.items()},
        "config": model.config.to_dict(),
        "experts": [len(b.experts) for b in blocks],
        "routers": [(type(b.router), b.router.in_features, b.router.out_features) for b in blocks],
        "routing": [(b.top_k, b.temperature, b.dispatch, b.forced_expert) for b in blocks],
        "vocab": (emb.num_embeddings, head.out_features, head.weight is emb.weight),
    }


def _assert_equal_snapshots(got: dict, want: dict) -> None:
    assert got["tensors"].keys() == want["tensors"].keys()
    for name, tensor in want["tensors"].items():
        assert torch.equal(got["tensors"][name], tensor), name
    assert {k: v for k, v in got.items() if k != "tensors"} == {k: v for k, v in want.items() if k != "tensors"}


def _assert_equal_stats(got: RouterStatistics, want: RouterStatistics) -> None:
    assert got.expert_names == want.expert_names
    assert torch.equal(got.gram, want.gram) and torch.equal(got.sums, want.sums)


def _fail_after(monkeypatch, module, attr: str, error: type[BaseException] = Injected) -> None:
    """``module.attr`` does its work, then raises ``error`` (the worst moment: the step's changes are made)."""
    real = getattr(module, attr)

    def broken(*args, **kwargs):
        real(*args, **kwargs)
        raise error(f"injected failure after {attr}")

    monkeypatch.setattr(module, attr, broken)


STEPS = {
    "add-fast": ["truncate_vocab", "_shift_backbone", "_resize_routers", "_update_layout", "collect_statistics",
                 "fit_routers", "annotate"],
    "add-exact": ["collect_statistics", "fit_routers"],
    "remove-fast": ["_shift_backbone", "_resize_routers", "_update_layout", "fit_routers", "annotate"],
    "remove-exact": ["collect_statistics", "annotate"],
}
CASES = [(op, step) for op, steps in STEPS.items() for step in steps]


@pytest.fixture(scope="module")
def fresh_results(setup):
    """What each update gives on an untouched copy of the model."""
    model, stats, experts = setup
    out = {}
    for op in STEPS:
        fresh = copy.deepcopy(model)
        stats_after = _run(op, fresh, stats, experts)
        out[op] = (_snapshot(fresh), stats_after)
    return out


@pytest.mark.parametrize("op,step", CASES, ids=[f"{op}-{step}" for op, step in CASES])
def test_failed_update_leaves_the_model_unchanged_and_a_retry_succeeds(setup, fresh_results, monkeypatch, op, step):
    base, stats, experts = setup
    model = copy.deepcopy(base)
    before = _snapshot(model)
    _fail_after(monkeypatch, ridge if step == "annotate" else dynamic, step)
    with pytest.raises(Injected, match=step):
        _run(op, model, stats, experts)
    _assert_equal_snapshots(_snapshot(model), before)
    monkeypatch.undo()
    got = _run(op, model, stats, experts)
    want_model, want_stats = fresh_results[op]
    _assert_equal_snapshots(_snapshot(model), want_model)
    _assert_equal_stats(got, want_stats)


def test_an_interrupt_rolls_back_too(setup, monkeypatch):
    base, stats, experts = setup
    model = copy.deepcopy(base)
    before = _snapshot(model)
    _fail_after(monkeypatch, dynamic, "collect_statistics", KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        _run("add-fast", model, stats, experts)
    _assert_equal_snapshots(_snapshot(model), before)


# ------------------------------------------------------------------------------------------------ CLI

@pytest.fixture(scope="module")
def saved(setup, tiny_tokenizer, tmp_path_factory):
    """A pristine saved model folder, its tensors, and the tensors of the model with expert 'a' removed."""
    model, stats, _ = setup
    folder = tmp_path_factory.mktemp("saved") / "model"
    model.save_pretrained(folder, tokenizer=tiny_tokenizer)
    stats.save(folder / dynamic_cli.STATS_FILE)
    removed = copy.deepcopy(model)
    dynamic.remove_expert(removed, stats, "a", progress=False)
    return folder, _tensors(model), _tensors(removed)


def _tensors(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture()
def dest(saved, tmp_path) -> Path:
    """A copy of the saved model, alone in its parent folder."""
    (tmp_path / "models").mkdir()
    shutil.copytree(saved[0], tmp_path / "models" / "m")
    return tmp_path / "models" / "m"


def _remove_in_place(dest: Path) -> None:
    dynamic_cli.main(["remove", "--model", str(dest), "--out", str(dest), "--expert", "a"])


def _which(dest: Path, saved) -> str:
    """``"old"`` or ``"new"``: the model in ``dest`` loads and equals one of them exactly, statistics included."""
    _, old, new = saved
    got = _tensors(load_upcycled(dest))
    names = RouterStatistics.load(dest / dynamic_cli.STATS_FILE).expert_names
    for label, want, want_names in (("old", old, ["a", "b"]), ("new", new, ["b"])):
        if got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want):
            assert names == want_names, f"the {label} model with the statistics of {names}"
            return label
    raise AssertionError(f"{dest} holds neither the old nor the new model")


def _publish_weights_then_fail(staged: Path, target: Path) -> None:
    """save_pretrained's publish step cut short: the weights are moved in, config.json is not."""
    target.mkdir(parents=True, exist_ok=True)
    for f in staged.glob("model*.safetensors*"):
        os.replace(f, target / f.name)
    raise Injected("injected failure while publishing the weights")


def _fail_saving_statistics(self, path, metadata=None):
    raise Injected("injected failure while saving the statistics")


@pytest.mark.parametrize("target,attr,replacement", [
    (modeling_dume, "_publish", _publish_weights_then_fail),
    (RouterStatistics, "save", _fail_saving_statistics),
], ids=["publish", "statistics"])
def test_cli_failure_during_the_save_keeps_the_old_model(saved, dest, monkeypatch, target, attr, replacement):
    monkeypatch.setattr(target, attr, replacement)
    with pytest.raises(Injected):
        _remove_in_place(dest)
    assert _which(dest, saved) == "old"
    assert os.listdir(dest.parent) == ["m"], "leftovers of the failed update"
    monkeypatch.undo()
    _remove_in_place(dest)
    assert _which(dest, saved) == "new" and os.listdir(dest.parent) == ["m"]


def test_cli_failure_between_the_fallback_swap_steps_keeps_the_old_model(saved, dest, monkeypatch):
    real_rename = os.rename

    def rename(src, dst):
        if Path(src).name == "new":
            raise Injected("injected failure before the new folder is renamed in")
        real_rename(src, dst)

    monkeypatch.setattr(folders, "_exchange", lambda a, b: False)
    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(Injected):
        _remove_in_place(dest)
    assert _which(dest, saved) == "old" and os.listdir(dest.parent) == ["m"]


def _killed_at(call: int, dest: Path, fallback: bool) -> bool:
    """Run the in-place update in a forked child that SIGKILLs itself just before its ``call``-th file-system
    commit step (rename, replace, folder exchange or removal); True when it was killed, False when it finished."""
    pid = os.fork()
    if pid:
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) or os.WEXITSTATUS(status) == 0, f"the update failed (status {status})"
        return os.WIFSIGNALED(status)
    torch.set_num_threads(1)  # the parent's OpenMP pool does not survive fork(): a parallel region would hang
    try:
        counter = iter(range(call - 1))

        def killing(real):
            def step(*args, **kwargs):
                if next(counter, None) is None:
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(*args, **kwargs)
            return step

        for module, attr in ((os, "rename"), (os, "replace"), (shutil, "rmtree"), (folders, "_exchange")):
            real = (lambda a, b: False) if fallback and attr == "_exchange" else getattr(module, attr, None)
            if real is not None:
                setattr(module, attr, killing(real))
        _remove_in_place(dest)
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="kills a forked copy of the test process")
@pytest.mark.parametrize("fallback", [False, True], ids=["exchange", "fallback"])
def test_cli_killed_at_any_step_leaves_the_old_or_the_new_model(saved, dest, fallback):
    """With the exchange the folder is always complete; with the fallback it is after the recovery the CLI runs
    at its next start."""
    seen = set()
    for call in range(1, 100):
        killed = _killed_at(call, dest, fallback)
        if fallback:
            folders.recover_interrupted_update(dest)
        seen.add(_which(dest, saved))
        if not killed:
            break
        shutil.rmtree(dest)
        shutil.copytree(saved[0], dest)
    assert not killed and seen == {"old", "new"}
    assert _which(dest, saved) == "new" and os.listdir(dest.parent) == ["m"]
