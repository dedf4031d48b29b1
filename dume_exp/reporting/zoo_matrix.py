"""Zoo quality: the expert × domain matrix (base model included) read from an experiment's results.

The experiment scores every dense expert and the base model on every domain anyway, so the matrix
costs no extra evaluation; it lands in ``results/zoo/<experiment>_matrix.{md,csv}``.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from ..utils.cache import atomic_file
from ..strategies.registry import BASE_ROW, expert_row


def quality_tables(results: dict[str, Any], out_dir: str | Path) -> Path | None:
    """Write the matrix and its checks (own-domain best, gain over base); ``None`` without base/expert rows."""
    domains = results["domains"]
    rows = {r["name"]: r for r in results["seeds"][0]["rows"]}
    names = [BASE_ROW] + [expert_row(d) for d in domains]
    if any(n not in rows for n in names):
        return None
    hib = {d: results["metrics"][d]["higher_is_better"] for d in domains}
    score = {n: rows[n]["scores"] for n in names}
    stderr = {n: rows[n]["stderr"] for n in names}

    def best(d: str) -> str:
        return (max if hib[d] else min)(names, key=lambda n: score[n][d])

    lines = [f"# Zoo quality: {results['title']}", "",
             "| model | " + " | ".join(domains) + " |", "|---" * (len(domains) + 1) + "|"]
    for n in names:
        cells = []
        for d in domains:
            se = stderr[n][d]
            cell = f"{score[n][d]:.3f}" + (f" ± {se:.3f}" if isinstance(se, (int, float)) else "")
            cells.append(f"**{cell}**" if best(d) == n else cell)
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "| domain | its expert is best | gain of its expert over the base |", "|---|---|---|"]
    for d in domains:
        own, base = score[expert_row(d)][d], score[BASE_ROW][d]
        if base == 0:  # no relative gain over a zero score: the absolute one
            gain = f"{own:+.3f} (the base scores 0)"
        else:
            gain = f"{100 * ((own - base) / base if hib[d] else (base - own) / base):+.1f}%"
        lines.append(f"| {d} | {'yes' if best(d) == expert_row(d) else 'no'} | {gain} |")
    metric = "; ".join(f"{d}: {results['metrics'][d]['label']}, {'higher' if hib[d] else 'lower'} is better, "
                       f"n={rows[BASE_ROW]['n'][d]}" for d in domains)
    lines += ["", f"Metrics: {metric}. Bold: best per column; ± is the standard error where the metric has one. "
              "Gain for perplexity is the relative reduction of the perplexity (here byte perplexity, which is "
              "stricter than token perplexity: a 10% lower byte perplexity is a far larger drop in token perplexity)."]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["model"] + domains + [f"{d}_stderr" for d in domains])
    for n in names:
        writer.writerow([n] + [score[n][d] for d in domains] + [stderr[n][d] for d in domains])
    out_dir = Path(out_dir)
    md = out_dir / f"{results['experiment']}_matrix.md"
    for path, text in ((md, "\n".join(lines) + "\n"), (out_dir / f"{results['experiment']}_matrix.csv", buf.getvalue())):
        with atomic_file(path) as tmp:
            tmp.write_text(text)
    return md
