"""Sweep tables and figures from a sweep's results cells: retention vs λ, and vs the number of experts."""
from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..strategies.registry import checkpoint_of, expert_row
from ..utils.cache import atomic_file, read_checked_json
from .bootstrap import PairedBootstrap, retention_intervals, table_bootstrap
from .figures import plt, save_figure
from .router_curve import (CURVE_STRATEGIES, has_checkpoint_rows, router_curve_figure,
                           router_curve_table)
from .tables import table_rows, write_report


def avg_intervals(cell: dict[str, Any], boot: PairedBootstrap | None = None) -> dict[str, tuple[float, float]]:
    """Each candidate's 95% bootstrap interval of its average retention (empty for cells without per-item outcomes;
    ``boot``: the cell's bootstrap, when the caller has it already)."""
    intervals = retention_intervals(table_bootstrap(cell) if boot is None else boot)
    return {n: (i.low, i.high) for n, i in intervals.items()}


def _ci(interval: tuple[float, float] | None) -> str:
    return f"[{interval[0]:.1f}, {interval[1]:.1f}]" if interval else "n/a"


def load_cells(folder: Path) -> list[dict[str, Any]]:
    cells = [read_checked_json(p) for p in sorted(Path(folder).glob("*.json"))]
    if not cells:
        raise FileNotFoundError(f"No results cells (*.json) in {folder}; run the sweep first.")
    return cells


def _lam_value(lam: Any) -> float | str:
    return "auto" if lam == "auto" else float(lam)


def collection_summary(cells: list[dict[str, Any]], name: str = "dume") -> str:
    """How much statistics collection the cells' ``name`` rows did, against one collection per cell (the reference)."""
    reports = [r["info"]["statistics"] for cell in cells for run in cell["seeds"] for r in run["rows"]
               if r["name"] == name and "statistics" in r.get("info", {})]
    if not reports:
        return f"No {name} rows report their statistics collection."
    spent = sum(r["collect_wall_s"] for r in reports)
    single = max(r["wall_s"] for r in reports)  # one full collection pass (measured where it ran)
    return (f"Statistics collection: {spent:.1f} s across {len(reports)} {name} builds, against {single:.1f} s for one "
            f"collection: {spent / single:.2f}x (one collection per build, as the reference code does: "
            f"{len(reports)}x). Builds that loaded the statistics from the store collected nothing.")


def lambda_sweep(cells: list[dict[str, Any]], out: Path, figure: Path, name: str = "dume") -> tuple[Path, Path]:
    """Retention of ``name`` vs λ (per domain and average; GCV's ``auto`` as a dashed line): ``out/lambda.md``
    and the PNG ``figure``."""
    points: dict[Any, dict[str, float]] = {}
    cis: dict[Any, tuple[float, float] | None] = {}
    for cell in cells:
        row = next((r for r in table_rows(cell) if r["name"] == name), None)
        if row is not None:
            lam = _lam_value(cell["config"]["router"]["lam"])
            points[lam] = {c: v[0] for c, v in row["retention"].items()}
            cis[lam] = avg_intervals(cell).get(name)
    domains = cells[0]["domains"] + ["avg"]
    numeric = sorted(k for k in points if k != "auto")
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, col in enumerate(domains):
        style = dict(color="black", linewidth=2.5) if col == "avg" else dict(color=f"C{i}")
        ax.plot(numeric, [points[k][col] for k in numeric], marker="o", label=col, **style)
        if col == "avg" and all(cis.get(k) for k in numeric):
            ax.fill_between(numeric, [cis[k][0] for k in numeric], [cis[k][1] for k in numeric], color="black",
                            alpha=0.12, label="avg 95% CI")
        if "auto" in points:
            ax.axhline(points["auto"][col], linestyle="--", linewidth=1, **{k: v for k, v in style.items() if k == "color"})
    ax.set_xscale("log")
    ax.set(xlabel="ridge penalty λ", ylabel="retention (%)",
           title=f"{name}: retention vs λ ({cells[0]['experiment']}; dashed: λ=auto by GCV)")
    ax.legend(fontsize=8, ncol=len(domains), loc="upper center", bbox_to_anchor=(0.5, -0.16))
    save_figure(fig, figure)
    keys = numeric + (["auto"] if "auto" in points else [])
    lines = [f"# λ sweep: {name} ({cells[0]['experiment']})", "", "| λ | " + " | ".join(domains) + " | avg 95% CI |",
             "|---" * (len(domains) + 2) + "|"]
    lines += [f"| {k} | " + " | ".join(f"{points[k][c]:.1f}" for c in domains) + f" | {_ci(cis[k])} |" for k in keys]
    lines += ["", "Retention (%) against each domain's dense expert; `auto` = per-layer λ chosen by generalised "
              "cross-validation from the same statistics; avg 95% CI: paired bootstrap over items and seeds (n/a: a "
              f"cell without per-item outcomes). Figure: {figure}.", "", collection_summary(cells, name)]
    print(lines[-1])
    return _write(out / "lambda.md", lines), figure


def experts_sweep(cells: list[dict[str, Any]], out: Path, figure: Path) -> tuple[Path, Path]:
    """Average retention vs number of experts, per strategy and statistics mode: ``out/experts.md`` and the PNG
    ``figure``."""
    series: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    lines_rows = []
    for cell in cells:
        mode, k = cell["config"]["router"]["statistics"], len(cell["domains"])
        experts = {expert_row(d) for d in cell["domains"]}
        cis = avg_intervals(cell)
        for row in table_rows(cell):
            if row["name"] in experts:  # a dense expert's average retention is not comparable across subsets
                continue
            label = row["name"]
            key = (label, mode if label == "dume" else "n/a")  # only DUME depends on the statistics mode
            series[key][k].append(row["retention"]["avg"][0])
            lines_rows.append((k, "+".join(cell["domains"]), label, key[1], row["retention"]["avg"][0], cis.get(label)))
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, ((label, mode), by_k) in enumerate(sorted(series.items())):
        ks = sorted(by_k)
        means = [statistics.fmean(by_k[k]) for k in ks]
        name = label if mode == "n/a" else f"{label} ({mode})"
        ax.plot(ks, means, marker="o", label=name, color=f"C{i}", linestyle="--" if mode == "fast" else "-")
        for k in ks:
            ax.scatter([k] * len(by_k[k]), by_k[k], color=f"C{i}", s=10, alpha=0.5)
    ax.set(xlabel="number of experts", ylabel="average retention (%)",
           title=f"retention vs number of experts ({cells[0]['experiment']}); dots: subsets")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    save_figure(fig, figure)
    lines = [f"# Expert-count sweep ({cells[0]['experiment']})", "",
             "| experts | subset | strategy | statistics | avg retention (%) | 95% CI |", "|---|---|---|---|---|---|"]
    seen = set()
    for k, subset, label, mode, value, ci in sorted(lines_rows, key=lambda r: r[:5]):
        if (subset, label, mode) in seen:  # baselines do not depend on the statistics mode
            continue
        seen.add((subset, label, mode))
        lines.append(f"| {k} | {subset} | {label} | {mode} | {value:.1f} | {_ci(ci)} |")
    lines += ["", "exact: statistics recollected under the subset's averaged backbone; fast: the full set's "
              "statistics reused (no forward pass). 95% CI: paired bootstrap over items and seeds (n/a: a cell "
              f"without per-item outcomes). Figure: {figure}."]
    return _write(out / "experts.md", lines), figure


def _write(path: Path, lines: list[str]) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return path


def router_training_sweep(cells: list[dict[str, Any]], out: Path, figure: Path) -> tuple[Path, Path]:
    """The router-training sweep, one cell (one training run per strategy, scored at its checkpoints): the cell's
    table and ``out/router_training.md``, and the curve ``figure``."""
    if len(cells) != 1:
        raise ValueError(f"{len(cells)} cells hold router-training checkpoint rows; the curve is one run's: pass that "
                         "run's cell file (python -m dume_exp.report <cells>/<key>.json --out <folder>).")
    cell = cells[0]
    boot = table_bootstrap(cell)
    ci = avg_intervals(cell, boot)
    vs_dume = {}
    if boot is not None and "dume" in boot.index:
        for name in boot.names:
            if (parsed := checkpoint_of(name)) and parsed[0] in CURVE_STRATEGIES:
                d = boot.difference(name, "dume")
                vs_dume[name] = (d.estimate, d.low, d.high)
    write_report(cell, out, boot)
    return (router_curve_table(cell, out / "router_training.md", ci, vs_dume),
            router_curve_figure(cell, figure, ci))


def sweep_report(folder: Path, out: Path, figures: Path) -> tuple[Path, Path]:
    """Detect which knob the cells vary (λ, the expert subset, or router-training checkpoints within one cell) and
    write that sweep's table (in ``out``) and figure (``figures/<lambda|experts|router_training>_<experiment>.png``)."""
    cells = load_cells(folder)
    experiment = cells[0]["experiment"]
    if len({json.dumps(c["config"]["router"]["lam"]) for c in cells}) > 1:
        return lambda_sweep(cells, out, figures / f"lambda_{experiment}.png")
    if len({json.dumps(c["config"]["experts"].get("subset")) for c in cells}) > 1:
        return experts_sweep(cells, out, figures / f"experts_{experiment}.png")
    if any(has_checkpoint_rows(c) for c in cells):
        return router_training_sweep(cells, out, figures / f"router_training_{experiment}.png")
    raise ValueError(f"The cells in {folder} vary neither router.lam nor experts.subset and hold no router-training "
                     "checkpoints; nothing to sweep over.")

