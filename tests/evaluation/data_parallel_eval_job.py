"""A torchrun job for tests/evaluation/test_data_parallel_eval.py: every process scores the same
model on the same perplexity suite through :func:`dume_exp.evaluation.make_lm`, counting the requests it ran."""
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dume_exp.evaluation import clm_suite, make_lm, run_suite


def main(root: Path) -> None:
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(root / "model").eval()
    lm = make_lm(model, AutoTokenizer.from_pretrained(root / "model"), batch_size=2)
    requests = []
    score = lm.loglikelihood_rolling
    lm.loglikelihood_rolling = lambda reqs, *a, **k: (requests.extend(reqs), score(reqs, *a, **k))[1]
    result = run_suite(lm, clm_suite(root / "data", ["prose", "code"], split="test"))
    (root / f"rank{lm.rank}.json").write_text(json.dumps({
        "requests": len(requests), "world": lm.world_size,
        "scores": None if result is None else {d: [s.score, s.n] for d, s in result.domains.items()}}))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
