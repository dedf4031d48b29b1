"""Everything a finished run publishes: its table, the zoo quality matrix (zoo runs) and its routing figure."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .figures import routing_figure
from .tables import write_report
from .zoo_matrix import quality_tables


def publish_tables(results: dict[str, Any], out: Path, figures: Path, track: Any = None) -> list[Path]:
    """Table in ``out`` (and the zoo matrix in ``out/../zoo`` for zoo runs), routing figure in ``figures`` (logged
    to ``track`` when given); returns the paths written."""
    written = [write_report(results, out)]
    if results["config"]["experts"]["source"] == "zoo" and (matrix := quality_tables(results, out.parent / "zoo")):
        written.append(matrix)
    figure = routing_figure(results, figures / f"{results['experiment']}_routing_dume.png")
    if figure is not None:
        if track is not None:
            track.log_image(f"figures/{figure.stem}", figure)
        written.append(figure)
    return written
