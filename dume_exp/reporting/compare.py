"""Two tables of one experiment side by side (``python -m dume_exp.report --compare A B``): each strategy's
retention per domain and on average in both, and the difference, for the strategies both tables hold."""
from __future__ import annotations

import csv
from pathlib import Path


def _retention(path: Path) -> tuple[list[str], dict[str, dict[str, float]]]:
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "retention"]
    if not rows:
        raise ValueError(f"{path} has no retention rows; give a table.csv written by dume_exp (results/<experiment>/).")
    fixed = {"strategy", "kind"}
    columns = [c for c in rows[0] if c not in fixed and not c.endswith(("_std", "_ci_low", "_ci_high"))
               and c not in ("wall_s", "forward_tokens", "backward_tokens", "n_seeds")]
    return columns, {r["strategy"]: {c: float(r[c]) for c in columns if r[c] != ""} for r in rows}


def compare_tables(a: str | Path, b: str | Path, labels: tuple[str, str] = ("A", "B")) -> str:
    """Markdown: for each strategy in both tables, ``A / B (B−A)`` retention points per column."""
    cols_a, ret_a = _retention(Path(a))
    cols_b, ret_b = _retention(Path(b))
    columns = [c for c in cols_a if c in cols_b]
    if not columns:
        raise ValueError(f"{a} and {b} share no column: they are tables of different experiments.")
    shared = [s for s in ret_a if s in ret_b]
    lines = [f"retention % — {labels[0]}: {a}; {labels[1]}: {b}. Cells: {labels[0]} / {labels[1]} "
             f"({labels[1]}−{labels[0]})", "",
             "| strategy | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for s in shared:
        cells = [f"{ret_a[s][c]:.1f} / {ret_b[s][c]:.1f} ({ret_b[s][c] - ret_a[s][c]:+.1f})"
                 if c in ret_a[s] and c in ret_b[s] else "n/a" for c in columns]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    only = sorted(set(ret_a) ^ set(ret_b))
    if only:
        lines += ["", f"in one table only: {', '.join(only)}"]
    return "\n".join(lines) + "\n"
