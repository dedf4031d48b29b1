"""A torchrun job for tests/method/test_distributed_statistics.py: every process collects the router statistics of
the same tiny model and batches with ``collect_statistics`` over gloo, and saves what it got and how many forward
passes it ran itself."""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from dume_exp import collect_statistics, upcycle
from tests.helpers import make_experts, random_batches


def main(out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = upcycle(make_experts(3, shared_backbone=False), top_k=1)
    passes = []
    model.model.register_forward_pre_hook(lambda module, args, kwargs: passes.append(1), with_kwargs=True)
    batches = [random_batches(5, 2, 12, seed=d) for d in range(3)]  # 5 batches per expert: 3 + 2 over 2 ranks
    stats = collect_statistics(model, batches, progress=False)
    stats.save(out / f"rank{rank}.safetensors")
    (out / f"rank{rank}.json").write_text(json.dumps({"forward_passes": len(passes), "world": dist.get_world_size()}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
