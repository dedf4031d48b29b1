"""Retention tables from run results (``table.md`` / ``table.csv``); the command line is ``python -m dume_exp.report``.

A run's ``results.json`` holds, per seed, every candidate's raw score per domain. The table shows raw
scores and retention % (higher-is-better: score / score of that domain's expert × 100; perplexity:
PPL(expert) / PPL(method) × 100), mean ± std over seeds, the best merged model of each column in bold,
and each strategy's construction cost.
"""
from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..evaluation.tasks.sandbox import UNISOLATED
from ..strategies.registry import Role, expert_row, role
from ..utils.cache import atomic_file, read_checked_json
from .bootstrap import Interval, PairedBootstrap, retention_intervals, table_bootstrap
from .claims import write_claims


def retention(score: float, expert_score: float, higher_is_better: bool) -> float:
    if higher_is_better:
        return 100.0 * score / expert_score if expert_score else float("nan")
    return 100.0 * expert_score / score if score else float("nan")


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per candidate: per-domain raw and retention (mean, std over seeds) plus averages and cost."""
    domains = results["domains"]
    hib = {d: results["metrics"][d]["higher_is_better"] for d in domains}
    strategy_of = {r["name"]: r["strategy"] for run in results["seeds"] for r in run["rows"]}
    rows = []
    for name, strategy in strategy_of.items():
        raw: dict[str, list[float]] = {d: [] for d in domains + ["avg"]}
        ret: dict[str, list[float]] = {d: [] for d in domains + ["avg"]}
        costs = []
        for run in results["seeds"]:
            by_name = {r["name"]: r for r in run["rows"]}
            if name not in by_name:
                continue
            row = by_name[name]
            rets = []
            for d in domains:
                expert = by_name[expert_row(d)]["scores"][d]
                raw[d].append(row["scores"][d])
                rets.append(retention(row["scores"][d], expert, hib[d]))
                ret[d].append(rets[-1])
            raw["avg"].append(statistics.fmean(row["scores"][d] for d in domains))
            ret["avg"].append(statistics.fmean(rets))
            costs.append(row["cost"])
        rows.append({
            "name": name,
            "strategy": strategy,
            "raw": {d: _mean_std(v) for d, v in raw.items()},
            "retention": {d: _mean_std(v) for d, v in ret.items()},
            "cost": {k: statistics.fmean(c[k] for c in costs) for k in costs[0]},
            "n_seeds": len(costs),
        })
    return rows


def _fmt(mean: float, std: float, n: int, digits: int) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def calibration_protocol_note(cal: dict[str, Any]) -> str:
    """The table note of a run whose calibration follows the reference implementation's protocol (empty otherwise;
    results written before these settings existed used the defaults)."""
    note = ""
    if cal.get("text", "prompt_answer") == "prompt":
        note += " Calibration text: **prompt** (questions/prompts only, no answers)."
    if not cal.get("mask_padding", True):
        note += " **PADDING COUNTED**: router statistics include the padding tokens of the calibration batches."
    return note


def render_markdown(results: dict[str, Any], rows: list[dict[str, Any]],
                    intervals: dict[str, Interval] | None = None) -> str:
    """The table; ``intervals`` (candidate → bootstrap interval of its average retention) adds a CI column."""
    domains = results["domains"]
    cols = domains + ["avg"]
    hib = {d: results["metrics"][d]["higher_is_better"] for d in domains}
    merged = [r for r in rows if role(r["strategy"]) is Role.RANKED]

    def best(section: str, col: str) -> str | None:
        if not merged:
            return None
        higher = section == "retention" or (col != "avg" and hib[col]) or (col == "avg" and all(hib.values()))
        pick = max if higher else min
        return pick(merged, key=lambda r: r[section][col][0])["name"]

    lines = [f"# {results['title']}", ""]
    for section, title, digits in (("raw", "Raw scores", 3), ("retention", "Retention (%)", 1)):
        ci = intervals if section == "retention" and intervals else None
        lines += [f"## {title}", "", "| strategy | " + " | ".join(cols) + (" | avg 95% CI" if ci else "")
                  + " | build wall s | fwd tokens | bwd tokens |", "|---" * (len(cols) + 4 + bool(ci)) + "|"]
        winners = {c: best(section, c) for c in cols}
        for r in rows:
            cells = []
            for c in cols:
                cell = _fmt(*r[section][c], r["n_seeds"], digits)
                cells.append(f"**{cell}**" if winners[c] == r["name"] else cell)
            if ci:
                cells.append(f"[{ci[r['name']].low:.1f}, {ci[r['name']].high:.1f}]" if r["name"] in ci else "")
            cost = r["cost"]
            lines.append(f"| {r['name']} | " + " | ".join(cells)
                         + f" | {cost['wall_s']:.1f} | {round(cost['forward_tokens']):,} | {round(cost['backward_tokens']):,} |")
        lines.append("")
    metric_notes = ", ".join(f"{d}: {results['metrics'][d]['label']}" for d in domains)
    cal = results["calibration"]
    lines += [
        f"Metrics: {metric_notes}.",
        "Retention: higher-is-better scores as score / score of that domain's expert × 100; perplexity as "
        "PPL(expert) / PPL(method) × 100. avg = mean over domains (of raw scores; of retentions)."
        + (" avg 95% CI: paired bootstrap over items (and seeds); the paired differences are in claims.md." if intervals
           else ""),
        "Bold: the best merged model per column (dense experts, the base model and the oracle upper bound are "
        "not ranked).",
        f"Calibration split: **{cal['split']}**" + (" (EVALUATION DATA: router statistics saw the test set)"
                                                  if cal.get("eval_split_leak") else "")
        + f"; max samples per domain: {cal['max_samples']}; seeds: {results['seed_list']}."
        + calibration_protocol_note(cal),
    ]
    if results.get("code_sandbox") == UNISOLATED:
        lines.append("Coding: model-written code ran WITHOUT operating-system isolation (eval.unsafe_code=true).")
    if results.get("notes"):
        lines += ["", *results["notes"]]
    return "\n".join(lines) + "\n"


def render_csv(results: dict[str, Any], rows: list[dict[str, Any]],
               intervals: dict[str, Interval] | None = None) -> str:
    cols = results["domains"] + ["avg"]
    buf = io.StringIO()
    writer = csv.writer(buf)
    ci = ["avg_ci_low", "avg_ci_high"] if intervals else []
    writer.writerow(["strategy", "kind"] + cols + [f"{c}_std" for c in cols] + ci
                    + ["wall_s", "forward_tokens", "backward_tokens", "n_seeds"])
    for r in rows:
        for kind in ("raw", "retention"):
            interval = intervals.get(r["name"]) if intervals and kind == "retention" else None
            bounds = ([interval.low, interval.high] if interval else ["", ""]) if ci else []
            writer.writerow([r["name"], kind] + [r[kind][c][0] for c in cols] + [r[kind][c][1] for c in cols] + bounds
                            + [r["cost"]["wall_s"], r["cost"]["forward_tokens"], r["cost"]["backward_tokens"], r["n_seeds"]])
    return buf.getvalue()


def write_report(results: dict[str, Any], out_dir: str | Path, boot: PairedBootstrap | None = None) -> Path:
    """Write ``table.md`` and ``table.csv`` (and, for results with per-item outcomes, the bootstrap intervals and
    ``claims.md``; ``boot``: that bootstrap, when the caller has it already) into ``out_dir`` atomically; returns
    the markdown path."""
    out_dir = Path(out_dir)
    rows = table_rows(results)
    boot = table_bootstrap(results) if boot is None else boot
    intervals = retention_intervals(boot) or None
    if boot is not None:
        write_claims(results, out_dir, boot)
    for name, text in (("table.md", render_markdown(results, rows, intervals)),
                       ("table.csv", render_csv(results, rows, intervals))):
        with atomic_file(out_dir / name) as tmp:
            tmp.write_text(text)
    return out_dir / "table.md"


def load_results(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: pass a run folder written by `python -m dume_exp` or its results.json.")
    return read_checked_json(path)


def merge_results(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One results dict from runs of one experiment (same domains and seeds): rows are taken in order,
    a later run's row replacing an earlier one of the same name (e.g. a strategy re-run or added later)."""
    first = runs[0]
    for other in runs[1:]:
        if (other["experiment"], other["domains"], other["seed_list"]) != (first["experiment"], first["domains"], first["seed_list"]):
            raise ValueError("--merge needs runs of the same experiment, domains and seeds.")
    merged = {**first, "seeds": []}
    for i, seed in enumerate(first["seed_list"]):
        rows: dict[str, dict[str, Any]] = {}
        for run in runs:
            rows.update({r["name"]: r for r in run["seeds"][i]["rows"]})
        merged["seeds"].append({"seed": seed, "rows": list(rows.values())})
    merged["notes"] = list(first.get("notes", [])) + [
        f"Merged from {len(runs)} runs; rows of later runs replace rows of the same name: "
        + "; ".join(f"run {i + 1}: {', '.join(r['name'] for r in run['seeds'][0]['rows'])}" for i, run in enumerate(runs))]
    return merged
