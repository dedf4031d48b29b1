"""``python -m dume_exp.zoo.paper_clm build``: build the paper's CLM expert set (:mod:`dume_exp.zoo.paper_clm`)."""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from ..zoo.paper_clm import LLAMA3_TOKENIZER, PAPER_DOMAINS, PaperCLMRecipe, build_paper_clm


def main(argv: list[str] | None = None) -> None:
    """``python -m dume_exp.zoo.paper_clm build [--root DIR] [--tokenizer ID] [--domains ...]``."""
    parser = argparse.ArgumentParser(prog="python -m dume_exp.zoo.paper_clm",
                                     description="Build the paper's CLM expert set (hub access; GPU-scale compute).")
    parser.add_argument("command", choices=("build",))
    parser.add_argument("--root", type=Path, default=None,
                        help="cache root (default: $DUME_CACHE, else ~/.cache/dume_exp)")
    parser.add_argument("--tokenizer", default=LLAMA3_TOKENIZER,
                        help="hub id or folder of the Llama-3 tokenizer (e.g. an ungated copy)")
    parser.add_argument("--domains", nargs="+", default=None, help=f"a subset of {list(PAPER_DOMAINS)}")
    parser.add_argument("--device", default="auto",
                        help="where pretraining and fine-tuning run (auto: CUDA, else MPS, else the CPU)")
    args = parser.parse_args(argv)
    recipe = PaperCLMRecipe(tokenizer=args.tokenizer)
    recipe = replace(recipe, pretrain=replace(recipe.pretrain, device=args.device),
                     finetune=replace(recipe.finetune, device=args.device))
    try:
        recipe = recipe.subset(args.domains) if args.domains else recipe
    except ValueError as err:
        parser.error(str(err))
    built = build_paper_clm(recipe, args.root)
    print(f"paper CLM expert set ready: {built.view}")
    for domain, path in built.experts.items():
        print(f"  {domain}: {path}")
    print(f"\nexport DUME_PAPER_CLM={built.view}  # read by dume_exp/conf/experts/paper_clm.yaml")
    print(" ".join(["python -m dume_exp +experiment=paper_clm", *built.domains_override()]))
    print("\nor, without the variable:")
    print(" ".join(["python -m dume_exp +experiment=paper_clm", *built.overrides()]))

