"""The compute-matched router-training curve: average retention of BTX and DUME+ at the checkpoints of their one
training run (rows ``<strategy>@<step>``, ``router_training.checkpoints``) against the tokens spent, with DUME's
closed form as a horizontal line at its own cost."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..strategies.registry import checkpoint_of
from ..utils.cache import atomic_file
from .figures import plt, save_figure
from .tables import table_rows

CURVE_STRATEGIES = ("btx", "dume_plus")  # the strategies that train routers, drawn in this order
LABELS = {"btx": "BTX (random init)", "dume_plus": "DUME+ (ridge init)", "dume": "DUME (closed form)"}


@dataclass(frozen=True)
class CurvePoint:
    """One row: its checkpoint step (``None`` for DUME), tokens processed forward + backward to build it, and its
    average retention (mean, std over seeds)."""

    name: str
    step: int | None
    tokens: float
    retention: float
    std: float


@dataclass(frozen=True)
class RouterCurve:
    """Each training strategy's points by step, DUME's point, and BTX's break-even: its first checkpoint whose mean
    retention reaches DUME's (``None``: none does, or there is no DUME row)."""

    series: dict[str, list[CurvePoint]]
    dume: CurvePoint | None
    break_even: int | None


def _point(row: dict[str, Any], step: int | None) -> CurvePoint:
    mean, std = row["retention"]["avg"]
    return CurvePoint(row["name"], step, row["cost"]["forward_tokens"] + row["cost"]["backward_tokens"], mean, std)


def has_checkpoint_rows(results: dict[str, Any]) -> bool:
    """Whether ``results`` hold a router-training checkpoint row of BTX or DUME+."""
    return any((parsed := checkpoint_of(r["name"])) and parsed[0] in CURVE_STRATEGIES and r["strategy"] == parsed[0]
               for run in results["seeds"] for r in run["rows"])


def router_curve(results: dict[str, Any]) -> RouterCurve:
    """The curve's data from ``results`` (retention means from :func:`~dume_exp.reporting.tables.table_rows`)."""
    series: dict[str, list[CurvePoint]] = {}
    dume = None
    for row in table_rows(results):
        parsed = checkpoint_of(row["name"])
        if parsed and parsed[0] in CURVE_STRATEGIES and row["strategy"] == parsed[0]:
            series.setdefault(parsed[0], []).append(_point(row, parsed[1]))
        elif row["name"] == "dume":
            dume = _point(row, None)
    series = {s: sorted(series[s], key=lambda p: p.step) for s in CURVE_STRATEGIES if s in series}
    even = None
    if dume is not None:
        even = next((p.step for p in series.get("btx", []) if p.retention >= dume.retention), None)
    return RouterCurve(series, dume, even)


def router_curve_figure(results: dict[str, Any], path: str | Path,
                        ci: dict[str, tuple[float, float]] | None = None) -> Path:
    """Draw :func:`router_curve` to the PNG ``path``: x = tokens processed (forward + backward), y = average
    retention; ``ci`` (row name → (low, high) of its average retention) as error bars, and as a band around the DUME
    line. Returns ``path``."""
    curve = router_curve(results)
    if not curve.series:
        raise ValueError("These results hold no router-training checkpoint rows (btx@<step>, dume_plus@<step>); run "
                         "with router_training.checkpoints set (sweeps/router_training.sh).")
    ci = ci or {}
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, (strategy, points) in enumerate(curve.series.items()):
        xs, ys = [p.tokens for p in points], [p.retention for p in points]
        ax.plot(xs, ys, marker="o", color=f"C{i}", label=LABELS[strategy])
        bars = [p for p in points if p.name in ci]
        if bars:
            ax.errorbar([p.tokens for p in bars], [p.retention for p in bars], fmt="none", ecolor=f"C{i}", capsize=3,
                        yerr=[[p.retention - ci[p.name][0] for p in bars], [ci[p.name][1] - p.retention for p in bars]])
        for p in points:
            ax.annotate(f"{p.step}", (p.tokens, p.retention), textcoords="offset points", xytext=(0, 6 if i else -12),
                        ha="center", fontsize=7, color=f"C{i}")
    if curve.dume is not None:
        d = curve.dume
        ax.axhline(d.retention, color="black", linestyle="--", linewidth=1.2, label=LABELS["dume"])
        if d.name in ci:
            ax.axhspan(*ci[d.name], color="black", alpha=0.08)
        ax.plot([d.tokens], [d.retention], marker="*", markersize=12, color="black")
        ax.annotate(f"DUME: {d.retention:.1f}% at {d.tokens:,.0f} tokens", (d.tokens, d.retention),
                    textcoords="offset points", xytext=(6, -12), fontsize=8)
    if curve.break_even is not None:
        ax.axvline(next(p.tokens for p in curve.series["btx"] if p.step == curve.break_even), color="C0",
                   linestyle=":", linewidth=1, label=f"BTX reaches DUME (step {curve.break_even})")
    ax.set(xlabel="tokens processed to build the model (forward + backward)", ylabel="average retention (%)",
           title=f"router training vs closed form ({results['experiment']}); labels: training steps")
    ax.legend(fontsize=8)
    return save_figure(fig, Path(path))


def router_curve_table(results: dict[str, Any], path: str | Path, ci: dict[str, tuple[float, float]] | None = None,
                       vs_dume: dict[str, tuple[float, float, float]] | None = None) -> Path:
    """The curve's points as a markdown table at ``path`` and the break-even line; ``ci``: each row's interval of its
    average retention, ``vs_dume``: each checkpoint's paired difference from DUME (estimate, low, high), where given."""
    curve, ci, vs_dume = router_curve(results), ci or {}, vs_dume or {}
    lines = [f"# Router training vs DUME ({results['experiment']})", "",
             "| row | steps | tokens (fwd + bwd) | avg retention (%) | 95% CI | minus DUME (points, paired 95% CI) |",
             "|---|---|---|---|---|---|"]
    points = ([curve.dume] if curve.dume else []) + [p for ps in curve.series.values() for p in ps]
    for p in points:
        interval = f"[{ci[p.name][0]:.1f}, {ci[p.name][1]:.1f}]" if p.name in ci else "n/a"
        diff = (f"{vs_dume[p.name][0]:+.1f} [{vs_dume[p.name][1]:+.1f}, {vs_dume[p.name][2]:+.1f}]"
                if p.name in vs_dume else "-" if p is curve.dume else "n/a")
        lines.append(f"| {p.name} | {'-' if p.step is None else p.step} | {p.tokens:,.0f} | "
                     f"{p.retention:.1f} ± {p.std:.1f} | {interval} | {diff} |")
    verdict = ("no DUME row" if curve.dume is None else f"BTX first reaches DUME's average retention at step "
               f"{curve.break_even}" if curve.break_even is not None else "BTX does not reach DUME's average retention "
               "at any checkpoint")
    lines += ["", f"Break-even: {verdict}. One training run per strategy, scored at each checkpoint; tokens count "
              "DUME's statistics pass (forward) and each training step's batch forward and backward; ± std over seeds; "
              "95% CI: paired bootstrap over items and seeds (n/a: results without per-item outcomes); minus DUME: the "
              "checkpoint's average retention minus DUME's, on the same resampled items."]
    with atomic_file(Path(path)) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return Path(path)
