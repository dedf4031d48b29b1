"""The claims table: for each comparison the paper (or a user choosing a training-free router) makes, the paired
difference in average retention with its bootstrap interval and a verdict.

``results/<experiment>/claims.md`` (and ``claims.json``) are written with the table; the README's
"What holds on the embedded zoo" section is generated from the ``claims.json`` files (:func:`update_readme`).
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..utils.cache import atomic_file
from .bootstrap import BOOTSTRAP_SEED, N_RESAMPLES, Interval, PairedBootstrap


@dataclass(frozen=True)
class Claim:
    """``better`` has a higher average retention than ``worse``."""

    better: str
    worse: str
    text: str


CLAIMS = (
    Claim("dume", "weight_average", "DUME retains more than weight averaging"),
    Claim("dume", "random_routing", "DUME's ridge routers beat random routing"),
    Claim("dume", "oracle", "DUME beats oracle routing (each domain forced to its expert)"),
    Claim("dume", "btx", "DUME beats BTX (routers trained from random init, the configured steps)"),
    Claim("dume_plus", "dume", "DUME+ (router training from the ridge init) improves on DUME"),
    Claim("dume", "mergekit_hidden", "DUME beats mergekit-moe's `hidden` gates"),
    Claim("dume", "mergekit_cheap_embed", "DUME beats mergekit-moe's `cheap_embed` gates"),
    Claim("dume", "nearest_centroid", "DUME beats a nearest-centroid router (domain means, no covariance)"),
)


def verdict(interval: Interval) -> str:
    """``holds`` (interval above 0), ``contradicted`` (below 0) or ``not resolved``."""
    if interval.low > 0:
        return "holds"
    if interval.high < 0:
        return "contradicted"
    return "not resolved"


def evaluate_claims(results: Mapping[str, Any], boot: PairedBootstrap | None = None) -> list[dict[str, Any]]:
    """One entry per claim whose two candidates are in ``results``: the difference, its interval and the verdict."""
    boot = PairedBootstrap(results, N_RESAMPLES, BOOTSTRAP_SEED) if boot is None else boot
    rows = []
    for claim in CLAIMS:
        if claim.better in boot.index and claim.worse in boot.index:
            interval = boot.difference(claim.better, claim.worse)
            rows.append({**asdict(claim), **asdict(interval), "verdict": verdict(interval)})
    return rows


def render_claims(results: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    lines = [f"# Claims: {results['title']}", "",
             "| claim | difference (points) | 95% CI | items | seeds | verdict |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['text']} | {r['estimate']:+.1f} | [{r['low']:+.1f}, {r['high']:+.1f}] | {r['n_items']} "
                     f"| {r['n_seeds']} | {r['verdict']} |")
    lines += ["", "Difference: average retention (%, mean over domains and seeds, as in table.md) of the first strategy "
              "minus the second. 95% CI: paired percentile bootstrap, "
              f"{N_RESAMPLES:,} resamples (seed {BOOTSTRAP_SEED}): the same resampled items for both models in every "
              "domain (documents for perplexity, token-weighted), seeds resampled as an outer level. Verdict: holds "
              "(CI above 0), contradicted (CI below 0), not resolved (CI contains 0). Items: evaluation items over "
              "all domains."]
    return "\n".join(lines) + "\n"


def write_claims(results: Mapping[str, Any], out_dir: Path, boot: PairedBootstrap | None = None) -> Path | None:
    """``claims.md`` and ``claims.json`` in ``out_dir`` (atomically); returns the markdown path, or ``None`` (nothing
    written) when the results hold no claim's two candidates (a sweep's checkpoint rows, a dense-only run)."""
    rows = evaluate_claims(results, boot)
    if not rows:
        return None
    record = {"experiment": results["experiment"], "title": results["title"], "n_resamples": N_RESAMPLES,
              "claims": rows}
    for name, text in (("claims.md", render_claims(results, rows)), ("claims.json", json.dumps(record, indent=1))):
        with atomic_file(Path(out_dir) / name) as tmp:
            tmp.write_text(text)
    return Path(out_dir) / "claims.md"


BEGIN, END = "<!-- claims:begin (python -m dume_exp.report --readme) -->", "<!-- claims:end -->"


def readme_section(claims_files: Sequence[Path]) -> str:
    """The README's claims section from ``claims.json`` files: one line per claim, its verdict and interval."""
    lines = []
    for path in claims_files:
        record = json.loads(Path(path).read_text())
        lines += ["", f"**{record['title']}** (`{Path(path).parent.as_posix()}/claims.md`):", ""]
        lines += [f"- {c['text']}: **{c['verdict']}**, {c['estimate']:+.1f} points [{c['low']:+.1f}, {c['high']:+.1f}]"
                  f" ({c['n_items']} items, {c['n_seeds']} seed{'s' if c['n_seeds'] > 1 else ''})"
                  for c in record["claims"]]
    return "\n".join([BEGIN, *lines, "", END])


def update_readme(readme: Path, claims_files: Sequence[Path]) -> bool:
    """Replace the claims section of ``readme`` (between its markers); returns whether the text changed."""
    text = readme.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{readme} has no claims section: add a line {BEGIN!r} and a line {END!r} where it goes.")
    new = pattern.sub(lambda _: readme_section(claims_files), text)
    if new != text:
        with atomic_file(readme) as tmp:
            tmp.write_text(new)
    return new != text
