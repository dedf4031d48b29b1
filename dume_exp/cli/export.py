"""``python -m dume_exp.export DUME_FOLDER OUT --arch mixtral|qwen2_moe``: write a saved DUME model as a stock
transformers MoE checkpoint (:mod:`dume_exp.export`) that vLLM and llama.cpp's converter read."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..export import ARCHITECTURES, ExportError, export_moe


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dume_exp.export", description=__doc__)
    parser.add_argument("model", type=Path, help="a saved DUME model folder (native format)")
    parser.add_argument("out", type=Path, help="output folder (new, empty, or an earlier export: replaced atomically)")
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="mixtral",
                        help="mixtral for Llama/Mistral experts, qwen2_moe for Qwen2 experts")
    parser.add_argument("--max-shard-size", default="5GB")
    args = parser.parse_args(argv)
    try:
        out = export_moe(args.model, args.out, arch=args.arch, max_shard_size=args.max_shard_size)
    except (ExportError, FileExistsError, FileNotFoundError) as err:
        raise SystemExit(f"export: {err}") from None
    print(f"wrote {out} ({args.arch})")
