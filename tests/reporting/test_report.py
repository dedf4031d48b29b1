"""Tables computed from synthetic results: retention arithmetic, seeds, best marking, zoo quality checks."""
import pytest

from dume_exp.reporting.sweep_tables import collection_summary
from dume_exp.reporting.tables import merge_results, render_markdown, retention, table_rows
from dume_exp.reporting.zoo_matrix import quality_tables
from tests.helpers import REPO


def _results(higher_is_better, seeds):
    domains = ["a", "b"]
    return {
        "experiment": "clm", "title": "t", "domains": domains, "seed_list": list(range(len(seeds))),
        "metrics": {d: {"label": "m", "higher_is_better": higher_is_better} for d in domains},
        "calibration": {"split": "train", "max_samples": 4, "eval_split_leak": False},
        "seeds": [{"seed": i, "rows": [
            {"name": name, "strategy": STRATEGY_OF.get(name, name), "scores": scores, "stderr": {d: None for d in domains}, "n": {d: 10 for d in domains},
             "cost": {"wall_s": 1.0, "forward_tokens": 5, "backward_tokens": 0}}
            for name, scores in rows.items()]} for i, rows in enumerate(seeds)],
    }


STRATEGY_OF = {"expert:a": "dense_expert", "expert:b": "dense_expert", "base": "base_model"}
ROWS = {"expert:a": {"a": 2.0, "b": 8.0}, "expert:b": {"a": 6.0, "b": 4.0}, "base": {"a": 3.0, "b": 5.0},
        "dume": {"a": 2.5, "b": 5.0}, "weight_average": {"a": 4.0, "b": 4.5}}


def test_perplexity_retention_mean_std_and_best():
    second = {k: dict(v) for k, v in ROWS.items()}
    second["dume"]["a"] = 2.0
    res = _results(False, [ROWS, second])
    rows = {r["name"]: r for r in table_rows(res)}
    assert retention(2.5, 2.0, False) == 80.0 and retention(0.3, 0.6, True) == 50.0
    assert rows["dume"]["retention"]["a"][0] == pytest.approx((80.0 + 100.0) / 2)
    assert rows["dume"]["retention"]["a"][1] == pytest.approx(14.142135, rel=1e-6)  # std over the 2 seeds
    assert rows["dume"]["retention"]["b"][0] == pytest.approx(80.0)
    assert rows["weight_average"]["retention"]["avg"][0] == pytest.approx((50.0 + 4 / 4.5 * 100) / 2)
    md = render_markdown(res, table_rows(res))
    assert "| dume | **90.0 ± 14.1** |" in md  # best merged model on a (experts and base are not ranked)


def test_quality_table_checks_diagonal_and_gain(tmp_path):
    path = quality_tables(_results(False, [ROWS]), tmp_path)
    text = path.read_text()
    assert "| a | yes | +33.3% |" in text and "| b | yes | +20.0% |" in text
    bad = {k: dict(v) for k, v in ROWS.items()}
    bad["base"]["b"] = 3.0  # the base beats expert b on b
    text = quality_tables(_results(False, [bad]), tmp_path).read_text()
    assert "| b | no | -33.3% |" in text
    assert quality_tables(_results(False, [{"expert:a": ROWS["expert:a"]}]), tmp_path) is None
    floor = {k: dict(v) for k, v in ROWS.items()}
    floor["base"]["a"] = 0.0  # higher-is-better and a base at 0: the gain is absolute
    text = quality_tables(_results(True, [floor]), tmp_path).read_text()
    assert "| a | no | +2.000 (the base scores 0) |" in text  # expert b scores 6 on a


def test_merge_replaces_rows_of_the_same_name():
    fixed = {"oracle": {"a": 2.0, "b": 4.0}, "dume": {"a": 2.2, "b": 4.4}}
    merged = merge_results([_results(False, [ROWS]), _results(False, [fixed])])
    rows = {r["name"]: r["scores"] for r in merged["seeds"][0]["rows"]}
    assert list(rows) == list(ROWS) + ["oracle"] and rows["dume"] == fixed["dume"] and rows["oracle"] == fixed["oracle"]
    assert "Merged from 2 runs" in render_markdown(merged, table_rows(merged))
    with pytest.raises(ValueError, match="same experiment"):
        merge_results([_results(False, [ROWS]), {**_results(False, [fixed]), "domains": ["a"]}])


def test_collection_summary_counts_what_each_build_collected():
    def cell(collected_s):
        stats = {"collected": [], "loaded": [], "collect_wall_s": collected_s, "wall_s": 40.0, "mode": "exact"}
        return {"seeds": [{"rows": [{"name": "dume", "info": {"statistics": stats}}, {"name": "expert:a", "info": {}}]}]}

    text = collection_summary([cell(40.0)] + [cell(0.0)] * 5)  # one pass, five builds from the store
    assert text.startswith("Statistics collection: 40.0 s across 6 dume builds, against 40.0 s for one collection: 1.00x")
    assert "as the reference code does: 6x" in text
    assert collection_summary([cell(40.0), cell(20.0)]).split(": ")[2].startswith("1.50x")
    assert collection_summary([{"seeds": [{"rows": []}]}]) == "No dume rows report their statistics collection."


def test_compare_prints_both_tables_and_the_differences(tmp_path):
    import csv

    from dume_exp.reporting.compare import compare_tables

    committed = REPO / "results" / "reasoning" / "table.csv"
    with committed.open(newline="") as f:
        rows = list(csv.DictReader(f))
    dume = next(r for r in rows if r["strategy"] == "dume" and r["kind"] == "retention")
    before = float(dume["math"])
    dume["math"] = str(before + 2.5)
    rows = [r for r in rows if r["strategy"] != "oracle"]
    other = tmp_path / "table.csv"
    with other.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    text = compare_tables(committed, other, labels=("CPU", "GPU"))
    line = next(line for line in text.splitlines() if line.startswith("| dume |"))
    assert line.split(" | ")[1] == f"{before:.1f} / {before + 2.5:.1f} (+2.5)"
    assert "(+0.0)" in line.split(" | ")[2] and "in one table only: oracle" in text
    with pytest.raises(ValueError, match="no retention rows"):
        (tmp_path / "empty.csv").write_text("strategy,kind,math\n")
        compare_tables(committed, tmp_path / "empty.csv")
