"""Paired bootstrap intervals and the claims table, on synthetic results with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from dume_exp.reporting.bootstrap import PairedBootstrap, has_items
from dume_exp.reporting.claims import evaluate_claims, readme_section, render_claims, update_readme, write_claims
from dume_exp.reporting.tables import table_rows
from tests.helpers import item_outcomes as _items
from tests.helpers import make_results


def _one_domain(candidates: dict[str, list], n_seeds: int = 1) -> dict:
    return make_results({"math": True}, {name: [{"math": {"t": _items(v)}}] * n_seeds for name, v in candidates.items()})


def test_identical_models_give_an_interval_of_zero_and_a_planted_difference_its_classical_width():
    rng = np.random.default_rng(1)
    n = 400
    a = rng.integers(0, 2, n)
    b = a.copy()
    flip = rng.choice(n, 60, replace=False)
    b[flip[:45]], b[flip[45:]] = 0, 1  # b loses 45 items a wins, wins 15: a − b = 30/400
    a[flip[:45]], a[flip[45:]] = 1, 0
    results = _one_domain({"expert:math": [1] * n, "a": a, "a_copy": a, "b": b})
    boot = PairedBootstrap(results, n_resamples=10_000, seed=0)
    same = boot.difference("a", "a_copy")
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    diff = boot.difference("a", "b")
    d = (a - b).astype(float)
    assert diff.estimate == pytest.approx(100 * d.mean())  # the expert scores 1 everywhere: retention = 100 × score
    classical = 1.96 * 100 * d.std(ddof=1) / math.sqrt(n)
    assert diff.half_width == pytest.approx(classical, rel=0.06)
    assert diff.low > 0 and diff.n_items == n and diff.n_seeds == 1
    # the paired interval is much narrower than an unpaired one would be (the same items for both models)
    unpaired = 1.96 * 100 * math.sqrt(a.var(ddof=1) / n + b.var(ddof=1) / n)
    assert diff.half_width < 0.7 * unpaired


def test_point_estimates_are_the_tables_retention_for_perplexity_and_several_tasks():
    rng = np.random.default_rng(2)
    bytes_ = rng.integers(50, 500, 12)

    def ppl(scale):
        return {"t": _items(-scale * bytes_ * rng.uniform(0.8, 1.2, 12), bytes_, "perplexity")}

    def arc(p):
        return {f"arc_{lang}": _items(rng.random(15) < p) for lang in ("de", "fr")}

    rows = {"expert:web": [{"web": ppl(1.0), "arc": arc(0.5)}] * 2, "expert:arc": [{"web": ppl(1.5), "arc": arc(0.7)}] * 2,
            "dume": [{"web": ppl(1.1), "arc": arc(0.6)}, {"web": ppl(1.2), "arc": arc(0.65)}]}
    results = make_results({"web": False, "arc": True}, rows)
    boot = PairedBootstrap(results, n_resamples=2_000, seed=0)
    table = {r["name"]: r["retention"]["avg"][0] for r in table_rows(results)}
    for name in rows:
        assert boot.retention(name).estimate == pytest.approx(table[name], rel=1e-12)
    assert boot.retention("dume").n_items == 12 + 30 and boot.retention("dume").n_seeds == 2
    # seeded: the same intervals again; another seed, other draws
    again = PairedBootstrap(results, n_resamples=2_000, seed=0).retention("dume")
    assert again == boot.retention("dume")
    assert PairedBootstrap(results, n_resamples=2_000, seed=1).retention("dume") != again


def test_seeds_are_an_outer_level():
    rng = np.random.default_rng(3)
    n = 300
    a0, a1 = (rng.random(n) < 0.8).astype(float), (rng.random(n) < 0.3).astype(float)  # a is good in one seed, poor in the other
    b = rng.random(n) < 0.6
    expert = [{"math": {"t": _items([1] * n)}}] * 2
    two_seeds = make_results({"math": True}, {"expert:math": expert, "a": [{"math": {"t": _items(a0)}},
                                                                           {"math": {"t": _items(a1)}}],
                                               "b": [{"math": {"t": _items(b)}}] * 2})
    with_seeds = PairedBootstrap(two_seeds, n_resamples=4_000, seed=0).difference("a", "b")
    # the items-only interval of the seed-averaged outcomes is narrower: seed-to-seed spread is extra uncertainty
    pooled = make_results({"math": True}, {"expert:math": expert[:1], "a": [{"math": {"t": _items((a0 + a1) / 2)}}],
                                           "b": [{"math": {"t": _items(b)}}]})
    items_only = PairedBootstrap(pooled, n_resamples=4_000, seed=0).difference("a", "b")
    assert with_seeds.estimate == pytest.approx(items_only.estimate)
    assert with_seeds.half_width > 1.5 * items_only.half_width


def test_claims_verdicts_and_readme_section(tmp_path):
    n = 200
    good, bad = [1] * 150 + [0] * 50, [1] * 80 + [0] * 120
    results = _one_domain({"expert:math": [1] * n, "dume": good, "weight_average": bad, "random_routing": good,
                           "oracle": [1] * 190 + [0] * 10})
    rows = {r["worse"]: r for r in evaluate_claims(results)}
    assert set(rows) == {"weight_average", "random_routing", "oracle"}  # claims on absent strategies are left out
    assert rows["weight_average"]["verdict"] == "holds" and rows["weight_average"]["estimate"] == pytest.approx(35.0)
    assert rows["random_routing"]["verdict"] == "not resolved"
    assert rows["oracle"]["verdict"] == "contradicted"
    assert "| DUME retains more than weight averaging | +35.0 |" in render_claims(results, list(rows.values()))
    write_claims(results, tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n" + readme_section([]) + "\nrest\n")
    assert update_readme(readme, [tmp_path / "claims.json"]) and not update_readme(readme, [tmp_path / "claims.json"])
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("\nrest\n")
    assert "DUME retains more than weight averaging: **holds**, +35.0 points" in text
    with pytest.raises(ValueError, match="no claims section"):
        update_readme(tmp_path / "claims.md", [])


def test_results_without_items_or_with_other_items_are_refused():
    results = _one_domain({"expert:math": [1, 0, 1], "dume": [1, 1, 0]})
    results["seeds"][0]["rows"][1]["items"]["math"]["t"]["doc_id"] = [0, 1, 3]
    with pytest.raises(ValueError, match="other items"):
        PairedBootstrap(results)
    del results["seeds"][0]["rows"][1]["items"]
    assert not has_items(results)
    with pytest.raises(ValueError, match="resume=false"):
        PairedBootstrap(results)


def test_readme_claims_section_is_generated_from_the_committed_claims():
    from tests.helpers import REPO

    claims = sorted((REPO / "results").glob("*/claims.json"))
    section = readme_section([c.relative_to(REPO) for c in claims]) if claims else readme_section([])
    assert section in (REPO / "README.md").read_text(), "run `python -m dume_exp.report --readme`"
