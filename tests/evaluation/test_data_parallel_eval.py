"""lm-eval scoring data-parallel over two real processes (torchrun; accelerate's Accelerator then runs gloo on CPU):
each process scores only its share of the requests, and the gathered scores equal one process's. (On CPU,
``accelerate launch --cpu`` starts one process unless MPI is set up, so the test launches with torchrun.)"""
import json

import pytest

from dume_exp.evaluation import clm_suite, evaluate
from tests.helpers import REPO, run_torchrun, tiny_model

TEXTS = {"prose": ["A quiet river runs past the old mill number %d." % i for i in range(6)],
         "code": ["def g%d(y):\n    return y * %d\n" % (i, i) for i in range(6)]}


@pytest.mark.slow
def test_two_processes_score_half_each_and_gather_the_single_process_scores(tmp_path, tiny_tokenizer):
    model = tiny_model(vocab_size=len(tiny_tokenizer))
    model.save_pretrained(tmp_path / "model")
    tiny_tokenizer.save_pretrained(tmp_path / "model")
    for domain, rows in TEXTS.items():
        (tmp_path / "data" / domain).mkdir(parents=True)
        (tmp_path / "data" / domain / "test.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    proc = run_torchrun(REPO / "tests" / "evaluation/data_parallel_eval_job.py", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["requests"] for r in ranks] == [6, 6] and {r["world"] for r in ranks} == {2}  # 12 documents in all
    assert ranks[1]["scores"] is None
    single = evaluate(model, tiny_tokenizer, clm_suite(tmp_path / "data", ["prose", "code"], split="test"), batch_size=2)
    for domain, (score, n) in ranks[0]["scores"].items():
        assert n == single.domains[domain].n == 6
        assert abs(score - single.domains[domain].score) <= 1e-9 * abs(single.domains[domain].score)
