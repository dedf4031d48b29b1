"""``python -m dume_exp.report RUN [RUN ...]``: regenerate tables and figures from run folders, results files or a
sweep's ``cells/`` folder (:mod:`dume_exp.reporting`), without touching a model; ``--compare A B``: two tables side
by side."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..experiment.tracking import tracker
from ..reporting.claims import update_readme
from ..reporting.compare import compare_tables
from ..reporting.sweep_tables import sweep_report
from ..reporting.publish import publish_tables
from ..reporting.tables import load_results, merge_results
from ..utils.cache import write_checked_json


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dume_exp.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="run folders or results.json files; or a sweep's cells/ folder")
    parser.add_argument("--out", help="output folder (default: results/<experiment>; for cells, their parent)")
    parser.add_argument("--figures", default="results/figures", help="folder of the PNG figures")
    parser.add_argument("--merge", action="store_true", help="one table from several runs of one experiment")
    parser.add_argument("--logger", choices=("wandb", "none"), default="wandb",
                        help="log the figures to a wandb run (offline unless WANDB_MODE says otherwise) "
                             "under outputs/report/")
    parser.add_argument("--readme", nargs="?", const="README.md", metavar="PATH",
                        help="then regenerate the claims section of PATH (default README.md) from results/*/claims.json")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"),
                        help="print two table.csv files of one experiment side by side with the differences, and stop")
    args = parser.parse_args(argv)
    if args.compare:
        print(compare_tables(*args.compare), end="")
        return
    if not args.runs and not args.readme:
        parser.error("name at least one run folder, results file or cells folder, or pass --readme")
    figures = Path(args.figures)

    def table_dir(results: dict[str, Any]) -> Path:
        return Path(args.out) if args.out else Path("results") / results["experiment"]

    run_dir = Path("outputs") / "report" / time.strftime("%Y-%m-%d_%H-%M-%S")
    with tracker(args.logger, run_dir, {"runs": args.runs}, "dume_exp", name=f"report-{run_dir.name}",
                 group="report") as track:
        if args.merge:
            results = merge_results([load_results(r) for r in args.runs])
            out = table_dir(results)
            write_checked_json(out / "results.json", results)
            written = publish_tables(results, out, figures, track)
        else:
            written = []
            for run in map(Path, args.runs):
                if run.is_dir() and not (run / "results.json").exists():
                    table, figure = sweep_report(run, Path(args.out) if args.out else run.parent, figures)
                    track.log_image(f"figures/{figure.stem}", figure)
                    written += [table, figure]
                    continue
                results = load_results(run)
                written += publish_tables(results, table_dir(results), figures, track)
    if args.readme:
        claims = sorted(Path("results").glob("*/claims.json"))
        if update_readme(Path(args.readme), claims):
            written.append(Path(args.readme))
    for path in written:
        print(f"wrote {path}")

