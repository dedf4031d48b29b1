"""The router-training curve from synthetic results: its points, the break-even checkpoint, the figure, the table,
and where the report commands write them."""
import json

import pytest

from dume_exp.reporting.publish import publish_tables
from dume_exp.reporting.router_curve import (has_checkpoint_rows, router_curve, router_curve_figure,
                                             router_curve_table)
from dume_exp.reporting.sweep_tables import sweep_report
from tests.helpers import item_outcomes, make_results

PER_STEP = 100  # tokens of one training step
DUME_TOKENS = 40  # DUME's statistics pass (forward only)


def _row(name: str, strategy: str, score: float, forward: int, backward: int) -> dict:
    return {"name": name, "strategy": strategy, "scores": {"a": score, "b": score}, "stderr": {"a": None, "b": None},
            "n": {"a": 10, "b": 10}, "cost": {"wall_s": 1.0, "forward_tokens": forward, "backward_tokens": backward}}


def _results(btx: dict[int, float], plus: dict[int, float] | None = None, dume: float | None = 0.8) -> dict:
    """Higher-is-better scores on two domains whose experts score 1.0: a row's retention is 100 × its score."""
    rows = [_row("expert:a", "dense_expert", 1.0, 0, 0), _row("expert:b", "dense_expert", 1.0, 0, 0)]
    if dume is not None:
        rows.append(_row("dume", "dume", dume, DUME_TOKENS, 0))
    rows += [_row(f"btx@{c}", "btx", s, c * PER_STEP, c * PER_STEP) for c, s in btx.items()]
    rows += [_row(f"dume_plus@{c}", "dume_plus", s, DUME_TOKENS + c * PER_STEP, c * PER_STEP)
             for c, s in (plus or {}).items()]
    return {"experiment": "clm", "title": "t", "domains": ["a", "b"], "seed_list": [0],
            "metrics": {d: {"label": "m", "higher_is_better": True} for d in "ab"},
            "calibration": {"split": "train", "max_samples": 4, "eval_split_leak": False},
            "config": {"experts": {"source": "pretrained", "subset": None}, "router": {"lam": 0.01}}, "seeds": [{"seed": 0, "rows": rows}]}


def test_curve_points_and_break_even():
    curve = router_curve(_results({50: 0.7, 0: 0.3, 100: 0.85, 200: 0.9}, {0: 0.8, 50: 0.82}))
    assert [p.step for p in curve.series["btx"]] == [0, 50, 100, 200]  # by step, whatever the row order
    assert [p.tokens for p in curve.series["btx"]] == [0, 2 * 50 * PER_STEP, 2 * 100 * PER_STEP, 2 * 200 * PER_STEP]
    assert [p.retention for p in curve.series["btx"]] == pytest.approx([30.0, 70.0, 85.0, 90.0])
    assert [p.tokens for p in curve.series["dume_plus"]] == [DUME_TOKENS, DUME_TOKENS + 2 * 50 * PER_STEP]
    assert (curve.dume.tokens, curve.dume.retention) == (DUME_TOKENS, pytest.approx(80.0))
    assert curve.break_even == 100  # the first checkpoint whose retention reaches DUME's
    assert router_curve(_results({0: 0.3, 50: 0.8})).break_even == 50  # equal counts as reaching it
    assert router_curve(_results({0: 0.3, 50: 0.7})).break_even is None
    assert router_curve(_results({0: 0.3}, dume=None)).break_even is None


def test_only_checkpoint_rows_of_training_strategies_count():
    assert has_checkpoint_rows(_results({0: 0.5}))
    plain = _results({})
    plain["seeds"][0]["rows"].append(_row("btx", "btx", 0.5, 10, 10))
    plain["seeds"][0]["rows"].append(_row("dume@3", "dume", 0.5, 10, 10))  # not a training strategy
    assert not has_checkpoint_rows(plain)
    with pytest.raises(ValueError, match="router_training.checkpoints"):
        router_curve_figure(plain, "unused.png")


def test_figure_and_table_with_intervals(tmp_path):
    results = _results({0: 0.3, 25: 0.6, 50: 0.85}, {0: 0.8, 50: 0.9})
    ci = {"btx@25": (55.0, 65.0), "dume": (78.0, 82.0)}
    path = router_curve_figure(results, tmp_path / "curve.png", ci=ci)
    assert path == tmp_path / "curve.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = router_curve_table(results, tmp_path / "curve.md", ci, {"btx@25": (-20.0, -24.5, -15.25)}).read_text()
    assert "| btx@25 | 25 | 5,000 | 60.0 ± 0.0 | [55.0, 65.0] | -20.0 [-24.5, -15.2] |" in text
    assert "| dume | - | 40 | 80.0 ± 0.0 | [78.0, 82.0] | - |" in text
    assert "| btx@0 | 0 | 0 | 30.0 ± 0.0 | n/a | n/a |" in text
    assert "BTX first reaches DUME's average retention at step 50" in text


def test_report_writes_the_curve_for_runs_and_for_the_sweep_cell(tmp_path):
    figures = tmp_path / "figures"
    written = publish_tables(_results({0: 0.3, 50: 0.9}), tmp_path / "run", figures)
    assert figures / "router_training_clm.png" in written and (figures / "router_training_clm.png").exists()
    assert not any("router_training" in p.name for p in publish_tables(_results({}), tmp_path / "plain", tmp_path / "f2"))
    cells = tmp_path / "sweep" / "cells"
    cells.mkdir(parents=True)
    (cells / "one.json").write_text(json.dumps(_results({0: 0.3, 50: 0.9})))
    table, figure = sweep_report(cells, tmp_path / "sweep", tmp_path / "f3")
    assert table == tmp_path / "sweep" / "router_training.md" and figure == tmp_path / "f3" / "router_training_clm.png"
    assert figure.exists() and (tmp_path / "sweep" / "table.md").exists()
    (cells / "two.json").write_text(json.dumps(_results({0: 0.4, 50: 0.9})))
    with pytest.raises(ValueError, match="pass that run's cell file"):
        sweep_report(cells, tmp_path / "sweep", tmp_path / "f3")


def test_sweep_table_pairs_each_checkpoint_with_dume(tmp_path):
    """A cell with per-item outcomes: each checkpoint's difference from DUME is paired over the same items."""
    n = 100
    dume = [1] * 80 + [0] * 20
    rows = {"expert:a": [1] * n, "dume": dume, "btx@0": [0] * 80 + [1] * 20, "btx@50": dume,
            "dume_plus@0": dume, "dume_plus@50": [1] * 90 + [0] * 10}
    cell = make_results({"a": True}, {k: [{"a": {"t": item_outcomes(v)}}] for k, v in rows.items()})
    cell["seeds"][0]["rows"][0]["strategy"] = "dense_expert"
    cell["config"] = {"experts": {"subset": None}, "router": {"lam": 0.01}}
    cell.update(experiment="clm", calibration={"split": "train", "max_samples": 4, "eval_split_leak": False})
    cells = tmp_path / "cells"
    cells.mkdir()
    (cells / "one.json").write_text(json.dumps(cell))
    table, _ = sweep_report(cells, tmp_path, tmp_path / "figures")
    text = table.read_text()
    assert "| btx@50 | 50 |" in text and "| +0.0 [+0.0, +0.0] |" in text  # the same outcomes: exactly 0
    line = next(x for x in text.splitlines() if x.startswith("| btx@0 |"))
    estimate, low, high = (float(v) for v in line.split("|")[-2].replace("[", "").replace("]", "").replace(",", "")
                           .split())
    assert estimate == pytest.approx(-60.0) and low < -60.0 < high < 0  # 20% against 80%, every item disagrees
    assert "| dume_plus@50 | 50 |" in text and "BTX first reaches DUME's average retention at step 50" in text
    assert not (tmp_path / "claims.md").exists()  # checkpoint rows make no claim: no empty claims table
