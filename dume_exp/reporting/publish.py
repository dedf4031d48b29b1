"""Everything a finished run publishes: its table and claims, the zoo quality matrix (zoo runs) and its routing figure."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .bootstrap import has_items
from .figures import routing_figure
from .tables import write_report
from .zoo_matrix import quality_tables


def publish_tables(results: dict[str, Any], out: Path, figures: Path, track: Any = None) -> list[Path]:
    """Table in ``out`` (and the zoo matrix in ``out/../zoo`` for zoo runs), routing figure in ``figures`` (logged
    to ``track`` when given); returns the paths written."""
    written = [write_report(results, out)]
    claims = out / "claims.json"
    if claims.exists() and track is not None and has_items(results):  # this report's claims (write_report wrote them)
        rows = json.loads(claims.read_text())["claims"]
        track.log_table("claims", ["claim", "difference", "ci_low", "ci_high", "n_items", "seeds", "verdict"],
                        [[r["text"], r["estimate"], r["low"], r["high"], r["n_items"], r["n_seeds"], r["verdict"]]
                         for r in rows])
    if results["config"]["experts"]["source"] == "zoo" and (matrix := quality_tables(results, out.parent / "zoo")):
        written.append(matrix)
    figure = routing_figure(results, figures / f"{results['experiment']}_routing_dume.png")
    if figure is not None:
        if track is not None:
            track.log_image(f"figures/{figure.stem}", figure)
        written.append(figure)
    return written
