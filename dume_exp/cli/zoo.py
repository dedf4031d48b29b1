"""``python -m dume_exp.zoo build clm|reasoning [--key value ...]``: build the embedded zoo (cached by recipe).

Its quality table (expert × domain, base included) comes with every experiment run on it:
``results/zoo/<experiment>_matrix.md``."""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields

from ..zoo.build import SETTINGS, ensure_zoo
from ..zoo.train import TrainConfig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dume_exp.zoo", description=__doc__)
    parser.add_argument("command", choices=("build",))
    parser.add_argument("setting", choices=SETTINGS)
    parser.add_argument("--base", default="smollm2-135m-instruct-gguf")
    for f in fields(TrainConfig):
        kind = type(f.default)
        convert = (lambda v: {"true": True, "false": False}[v.lower()]) if kind is bool else kind
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=convert, default=None,
                            help=f"expert training: {f.name} (default {f.default})")
    args = parser.parse_args(argv)
    cfg = {"base": args.base, **{f.name: getattr(args, f.name) for f in fields(TrainConfig)
                                  if getattr(args, f.name) is not None}}
    start = time.perf_counter()
    zoo = ensure_zoo(args.setting, cfg)
    print(f"zoo {args.setting} ready in {time.perf_counter() - start:.1f} s")
    print(json.dumps({d: e["train"]["seconds"] for d, e in zoo.manifest["experts"].items()}, indent=1))

