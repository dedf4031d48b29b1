"""Sweep launchers that need computed values: ``python -m dume_exp.sweeps experts --experiment clm``.

The expert-count sweep evaluates every number of experts from 2 to D: all subsets of each size, or a
seeded sample of ``--per-count`` of them, in both statistics modes (see ``dume_exp/conf/sweep/experts.yaml``).
"""
from __future__ import annotations

import argparse
import itertools
import random
import shlex
import subprocess
import sys
from collections.abc import Sequence

from omegaconf import OmegaConf

from ..experiment.config import CONF_DIR

EXPERT_SETS = {"clm": CONF_DIR / "experts" / "zoo_clm.yaml", "reasoning": CONF_DIR / "experts" / "zoo_reasoning.yaml"}


def expert_subsets(domains: Sequence[str], per_count: int | None, seed: int) -> list[list[str]]:
    """Subsets of 2..D domains (order kept): all of them, or ``per_count`` sampled per size."""
    rng = random.Random(seed)
    subsets = []
    for k in range(2, len(domains) + 1):
        combos = [list(c) for c in itertools.combinations(domains, k)]
        if per_count is not None and len(combos) > per_count:
            combos = sorted(rng.sample(combos, per_count), key=lambda c: [domains.index(d) for d in c])
        subsets += combos
    return subsets


def experts_command(experiment: str, per_count: int | None, seed: int, extra: Sequence[str]) -> list[str]:
    domains = list(OmegaConf.load(EXPERT_SETS[experiment]).domains)
    choices = ",".join("[" + ",".join(s) + "]" for s in expert_subsets(domains, per_count, seed))
    return [sys.executable, "-m", "dume_exp", f"+experiment={experiment}", "+sweep=experts",
            f"experts.subset=choice({choices})", *extra]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dume_exp.sweeps", description=__doc__)
    sub = parser.add_subparsers(dest="sweep", required=True)
    p = sub.add_parser("experts", help="expert-count sweep")
    p.add_argument("--experiment", choices=sorted(EXPERT_SETS), default="clm")
    p.add_argument("--per-count", type=int, default=None, help="subsets sampled per size (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = parser.parse_args(argv)
    cmd = experts_command(args.experiment, args.per_count, args.seed, args.overrides)
    if args.dry_run:
        print(shlex.join(cmd))
        return
    raise SystemExit(subprocess.call(cmd))

