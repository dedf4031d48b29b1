"""Router statistics collected data-parallel by two real processes (torchrun, gloo) equal one process's."""
import json

import pytest
import torch

from dume_exp import RouterStatistics, collect_statistics, upcycle
from tests.helpers import REPO, run_torchrun, make_experts, random_batches


@pytest.mark.slow
def test_two_processes_each_collect_their_share_and_reduce_to_the_single_process_statistics(tmp_path):
    proc = run_torchrun(REPO / "tests" / "method/distributed_statistics_job.py", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["forward_passes"] for r in runs] == [3 * 3, 3 * 2] and {r["world"] for r in runs} == {2}
    model = upcycle(make_experts(3, shared_backbone=False), top_k=1)
    single = collect_statistics(model, [random_batches(5, 2, 12, seed=d) for d in range(3)], progress=False)
    for r in (0, 1):
        got = RouterStatistics.load(tmp_path / f"rank{r}.safetensors")
        assert torch.equal(got.token_counts, single.token_counts)
        for a, b in ((got.gram, single.gram), (got.sums, single.sums)):
            assert a.dtype == torch.float64 and ((a - b).abs().max() / b.abs().max()).item() <= 1e-9


def test_distributed_collection_outside_a_process_group_names_the_launcher():
    model = upcycle(make_experts(2), top_k=1)
    with pytest.raises(RuntimeError, match="torchrun"):
        collect_statistics(model, [random_batches(1, 1, 4), random_batches(1, 1, 4)], distributed=True, progress=False)
