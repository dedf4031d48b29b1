"""Everything a finished run publishes: its table and claims, the zoo quality matrix (zoo runs), its routing figure
and, for runs with router-training checkpoints, the router-training curve."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .bootstrap import table_bootstrap
from .figures import routing_figure
from .router_curve import has_checkpoint_rows, router_curve_figure
from .sweep_tables import avg_intervals
from .tables import write_report
from .zoo_matrix import quality_tables


def publish_tables(results: dict[str, Any], out: Path, figures: Path, track: Any = None) -> list[Path]:
    """Table in ``out`` (and the zoo matrix in ``out/../zoo`` for zoo runs), routing figure (and, with checkpoint
    rows, ``router_training_<experiment>.png``) in ``figures``, logged to ``track`` when given; returns the paths
    written."""
    boot = table_bootstrap(results)  # once, for the table, the claims and the router-training curve
    written = [write_report(results, out, boot)]
    claims = out / "claims.json"
    if claims.exists() and track is not None and boot is not None:  # this report's claims (write_report wrote them)
        rows = json.loads(claims.read_text())["claims"]
        track.log_table("claims", ["claim", "difference", "ci_low", "ci_high", "n_items", "seeds", "verdict"],
                        [[r["text"], r["estimate"], r["low"], r["high"], r["n_items"], r["n_seeds"], r["verdict"]]
                         for r in rows])
    if results["config"]["experts"]["source"] == "zoo" and (matrix := quality_tables(results, out.parent / "zoo")):
        written.append(matrix)
    drawn = [routing_figure(results, figures / f"{results['experiment']}_routing_dume.png")]
    if has_checkpoint_rows(results):
        drawn.append(router_curve_figure(results, figures / f"router_training_{results['experiment']}.png",
                                         avg_intervals(results, boot)))
    for figure in filter(None, drawn):
        if track is not None:
            track.log_image(f"figures/{figure.stem}", figure)
        written.append(figure)
    return written
