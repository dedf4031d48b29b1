"""NaN/inf and corruption: named errors for non-finite weights, statistics and routers; corrupt or empty cache entries
(statistics files, evaluation-cache JSON, atomic_dir folders) are moved aside with a warning and recomputed."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import dume_exp.experiment.scoring as scoring
from dume_exp import RidgeSolver, RouterStatistics, collect_statistics, upcycle, weight_average
from dume_exp.utils.cache import atomic_dir
from dume_exp.evaluation.harness import DomainSpec, Suite
from dume_exp.reporting.tables import load_results
from dume_exp.method.statistics_store import StatisticsStore
from dume_exp.strategies.base import Candidate

from tests.helpers import REPO, make_experts, random_batches

NAMES = ["a", "b"]


@pytest.fixture
def moe():
    return upcycle(make_experts(2, shared_backbone=False))


@pytest.fixture
def batches():
    return [random_batches(1, 2, 12, seed=40 + d) for d in range(2)]


def _fresh(moe, batches) -> RouterStatistics:
    return collect_statistics(moe, batches, 16, expert_names=NAMES, progress=False)


def _aside(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.corrupt-*"))


# ------------------------------------------------------------------------------------------- weights and routers

@pytest.mark.parametrize("merge", [upcycle, weight_average])
def test_nan_in_an_expert_weight_names_the_expert_and_parameter(merge):
    experts = make_experts(2)
    with torch.no_grad():
        experts[1].model.layers[1].mlp.up_proj.weight[3, 5] = float("nan")
        experts[1].model.layers[1].mlp.up_proj.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"expert 1.*parameter model\.layers\.1\.mlp\.up_proj\.weight has 2 non-finite"):
        merge(experts)


def test_non_finite_hidden_states_fail_the_collection_naming_expert_and_layer(moe, batches):
    with torch.no_grad():
        moe.model.layers[1].self_attn.o_proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"not finite: .*expert 'a' at layer 1 .*weights"):
        _fresh(moe, batches)


def test_non_finite_statistics_and_routers_are_named_at_the_solve(moe, batches):
    stats = _fresh(moe, batches)
    bad = RouterStatistics(stats.gram.clone(), stats.sums.clone(), NAMES)
    bad.sums[1, 1, 0] = float("inf")
    with pytest.raises(ValueError, match=r"feature sums of expert 'b' at layer 1 hold 1 non-finite"):
        RidgeSolver(bad)
    solver = RidgeSolver(stats)
    solver.projected_targets[1, 0, 1] = float("inf")  # as a numerical overflow inside the solve would
    with pytest.raises(ValueError, match=r"non-finite routers: the router weights of expert 'b' at layer 1"):
        solver.solve(1e-2)


def test_token_ids_beyond_the_vocabulary_are_a_clear_error(moe, batches):
    oov = [batches[0], [{"input_ids": torch.tensor([[5, 305, 7]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}]]
    with pytest.raises(ValueError, match=r"expert 'b' has token ids 5\.\.305 \(max id 305\).*300 embedding rows.*tokenizer"):
        _fresh(moe, oov)


# ------------------------------------------------------------------------------------------- statistics files

def _stored(moe, batches, tmp_path) -> tuple[StatisticsStore, list[Path]]:
    store = StatisticsStore(tmp_path / "store")
    _, report = store.statistics(moe, batches, 16, NAMES, progress=False)
    return store, [store.root / f"{k}.safetensors" for k in report["keys"]]


def _plant_nan_without_checksum(path: Path) -> None:
    """A NaN in the Gram matrix at layer 1, written as a file from before the checksum (the NaN check alone)."""
    tensors = load_file(path)
    with safe_open(str(path), framework="pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k != "sha256"}
    tensors["gram"][1, 0, 2, 3] = float("nan")
    save_file(tensors, str(path), metadata=meta)


def _flip_a_byte(path: Path) -> None:
    """Flip the lowest bit of the last float64 (a finite value stays finite: only the checksum can tell)."""
    data = bytearray(path.read_bytes())
    data[-8] ^= 1
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, problem", [
    (_plant_nan_without_checksum, r"Gram matrices of expert 'b' at layer 1 hold 1 non-finite"),
    (_flip_a_byte, r"differ from the sha256"),
    (lambda path: path.write_bytes(b""), r"not a readable statistics file"),
], ids=["nan", "flipped-byte", "zero-length"])
def test_a_corrupt_statistics_file_is_named_moved_aside_and_recollected(moe, batches, tmp_path, damage, problem):
    store, paths = _stored(moe, batches, tmp_path)
    damage(paths[1])
    with pytest.raises(ValueError, match=rf"{paths[1].name} is corrupt: .*{problem}"):
        RouterStatistics.load(paths[1])
    with pytest.warns(UserWarning, match=rf"{paths[1].name}: .*{problem}.*Moved it aside"):
        stats, report = store.statistics(moe, batches, 16, NAMES, progress=False)
    assert report["collected"] == ["b"] and report["loaded"] == ["a"]
    fresh = _fresh(moe, batches)
    # expert b collected alone may sum its float64 Gram updates in another order than b collected beside a (seen on
    # an AVX2-only CPU: 1.8e-15 on entries up to 65), so the recollection is held to 1e-12 relative, not bit equality
    torch.testing.assert_close(stats.gram, fresh.gram, rtol=1e-12, atol=0)
    torch.testing.assert_close(stats.sums, fresh.sums, rtol=1e-12, atol=0)
    assert len(_aside(paths[1])) == 1
    assert torch.equal(RouterStatistics.load(paths[1]).gram, stats.gram[:, 1:])  # the rewritten entry verifies


# ------------------------------------------------------------------------------------------- evaluation cache JSON

def _score_setup(monkeypatch, tmp_path) -> tuple[list[int], callable]:
    """score_candidate on one domain with a counting stand-in for the lm-eval run, caching under ``tmp_path``."""
    monkeypatch.setattr(scoring, "cache_root", lambda: tmp_path)
    calls = []

    def fake_evaluate(model, tokenizer, suite, **kwargs):
        calls.append(1)
        items = {"t": {"aggregate": "mean", "doc_id": [0, 1], "num": [1.0, 0.0], "den": [1.0, 1.0]}}
        return SimpleNamespace(domains={"d": SimpleNamespace(score=0.5, stderr=0.125, n=8, items=items)}, wall_s=2.0)

    monkeypatch.setattr(scoring, "evaluate", fake_evaluate)
    cfg = OmegaConf.create({"eval": {"bf16": False, "cache": True, "batch_size": 1, "protocol": "harness",
                                     "apply_chat_template": False, "max_gen_toks": 8, "bootstrap_iters": 0,
                                     "limit": 4, "domain_limit": {}, "backend": "inmemory", "processes": 1,
                                     "seed": 0}})
    suite = Suite("s", {"d": DomainSpec(tasks=({"task": "t"},), metric="acc")})
    cand = Candidate("dense", make_experts(1)[0])
    return calls, lambda: scoring.score_candidate(cand, cfg, suite, None, seed=0)


@pytest.mark.parametrize("damage, problem", [
    (lambda p: p.write_text(p.read_text().replace('"score": 0.5', '"score": 0.6')), r"content sha256 .* differs"),
    (lambda p: p.write_bytes(b""), r"the file is empty"),
], ids=["flipped-byte", "zero-length"])
def test_a_corrupt_evaluation_cache_entry_is_named_moved_aside_and_recomputed(monkeypatch, tmp_path, damage, problem):
    calls, score = _score_setup(monkeypatch, tmp_path)
    fresh = score()
    assert score() == {**fresh, "eval_cached": ["d"]} and len(calls) == 1
    [entry] = (tmp_path / "evaluations").glob("*.json")
    damage(entry)
    with pytest.warns(UserWarning, match=rf"{entry.name}: .*{problem}.*Moved it aside"):
        again = score()
    assert again == fresh and len(calls) == 2 and len(_aside(entry)) == 1
    assert score() == {**fresh, "eval_cached": ["d"]} and len(calls) == 2  # the recomputed entry verifies


def test_an_empty_results_file_is_a_named_error(tmp_path):
    (tmp_path / "results.json").write_text("")
    with pytest.raises(ValueError, match=r"results\.json is corrupt: the file is empty"):
        load_results(tmp_path)


def test_committed_legacy_results_stay_readable_and_are_not_rewritten(tmp_path):
    from dume_exp.utils.cache import CHECKSUM_KEY, write_checked_json

    committed = REPO / "results" / "clm" / "results.json"
    copy = tmp_path / "results.json"
    copy.write_bytes(committed.read_bytes())
    results = load_results(copy)
    assert results == json.loads(committed.read_text()) and CHECKSUM_KEY not in results
    write_checked_json(copy, results)  # what publishing a resumed legacy cell does
    assert copy.read_bytes() == committed.read_bytes()
    write_checked_json(copy, {**results, "title": "changed"})
    assert CHECKSUM_KEY in json.loads(copy.read_text()) and load_results(copy)["title"] == "changed"


# ------------------------------------------------------------------------------------------- atomic_dir entries

def _commit(final: Path) -> None:
    with atomic_dir(final) as tmp:
        (tmp / "sub").mkdir()
        for name in ("a.txt", "sub/b.txt"):
            (tmp / name).write_text(f"content of {name}\n")


@pytest.mark.parametrize("damage", [lambda f: (f / "sub" / "b.txt").write_bytes(b""),
                                    lambda f: (f / "a.txt").write_text("content of a.tx!\n"),
                                    lambda f: (f / "a.txt").unlink()], ids=["zero-length", "flipped-byte", "missing"])
def test_a_corrupt_atomic_dir_entry_is_moved_aside_and_rewritten(tmp_path, damage):
    final = tmp_path / "entry"
    _commit(final)
    damage(final)
    with pytest.warns(UserWarning, match=r"Corrupt cache entry .*entry: .*(changed|missing) file.*Moved it aside"):
        _commit(final)
    assert (final / "a.txt").read_text() == "content of a.txt\n"
    assert (final / "sub" / "b.txt").read_text() == "content of sub/b.txt\n"
    assert len(_aside(final)) == 1
