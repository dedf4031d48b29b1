"""Scoring a saved model folder in a launched multi-process job (``eval.backend=hf``).

``python -m torch.distributed.run --standalone --nproc_per_node N -m dume_exp.experiment.score_worker SPEC OUT``: every
process loads the folder onto its own device (``cuda:<local rank>`` on GPUs, else the CPU), lm-eval shards the
requests over the processes (:func:`~dume_exp.evaluation.harness.make_lm`), the routing counts are summed over them,
and rank 0 writes the result to ``OUT`` (JSON). ``SPEC`` is a pickle written by :func:`write_spec`.
"""
from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import torch

from ..evaluation import Suite


def write_spec(path: Path, folder: Path, suite: Suite, **run_kwargs: Any) -> None:
    """The job's input: the model folder, the suite and :func:`~dume_exp.evaluation.harness.run_suite`'s keywords
    (plus ``batch_size``)."""
    path.write_bytes(pickle.dumps({"folder": str(folder), "suite": suite, "run": run_kwargs}))


def main(argv: list[str] | None = None) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..method.moe import moe_blocks, reset_routing_counts, routing_counts
    from ..evaluation import make_lm, run_suite

    spec_path, out = argv if argv is not None else sys.argv[1:]
    spec = pickle.loads(Path(spec_path).read_bytes())
    run = dict(spec["run"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    model = AutoModelForCausalLM.from_pretrained(spec["folder"], dtype="auto").to(device).eval()
    lm = make_lm(model, AutoTokenizer.from_pretrained(spec["folder"]), batch_size=run.pop("batch_size"))
    if moe_blocks(model):
        reset_routing_counts(model)
    result = run_suite(lm, spec["suite"], **run)
    counts = routing_counts(model) if moe_blocks(model) else None
    if counts is not None and lm.world_size > 1:
        torch.distributed.all_reduce(counts)
    if result is not None:
        domains = {d: {"score": s.score, "stderr": s.stderr, "n": s.n, "items": s.items} for d, s in result.domains.items()}
        tmp = Path(f"{out}.tmp")
        tmp.write_text(json.dumps({"domains": domains, "wall_s": result.wall_s, "processes": lm.world_size,
                                   "routing_counts": None if counts is None else counts.tolist()}))
        tmp.replace(out)
    if lm.world_size > 1:  # leave together: a process exiting with the group alive aborts in its threads
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
