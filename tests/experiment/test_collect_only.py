"""``calibration.collect_only``: one job per domain puts its expert's router statistics (every seed) into the store, and
the run itself then loads them all, collecting nothing, with the routers (and scores) of a run that collected them in
one pass."""
import json

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import make_experts, run_app, run_micro, tiny_model, write_micro_setup


def dume_row(root, run):
    rows = json.loads((root / run / "results.json").read_text())["seeds"]
    return [next(r for r in s["rows"] if r["name"] == "dume") for s in rows]


@pytest.mark.slow
def test_per_domain_jobs_fill_the_store_and_the_run_loads_them(tmp_path, tiny_tokenizer):
    experts = make_experts(2, shared_backbone=False, vocab_size=len(tiny_tokenizer))
    write_micro_setup(tmp_path, experts, tiny_model(vocab_size=len(tiny_tokenizer)), tiny_tokenizer)
    common = ("strategy=[dume]", "logger=none", "eval.bf16=false", "seeds=[0,1]")
    for domain in ("prose", "code"):
        job = run_app(tmp_path, *common, f"calibration.collect_only=[{domain}]", f"hydra.run.dir={tmp_path}/{domain}")
        assert job.returncode == 0, job.stderr[-3000:]
        report = json.loads((tmp_path / domain / "statistics.json").read_text())
        assert [report[s]["collected"] for s in ("0", "1")] == [[domain], [domain]]
        assert not (tmp_path / domain / "results.json").exists() and not list(tmp_path.glob("results/**/cells/*"))
    stored = sorted((tmp_path / "cache" / "statistics").glob("*.safetensors"))
    assert len(stored) == 4  # 2 domains x 2 seeds
    run = run_app(tmp_path, *common, f"hydra.run.dir={tmp_path}/run")
    assert run.returncode == 0, run.stderr[-3000:]
    for row in dume_row(tmp_path, "run"):
        assert row["info"]["statistics"]["collected"] == [] and row["info"]["statistics"]["loaded"] == ["prose", "code"]

    # the same run collecting everything itself in one pass, beside the same experts with an empty store
    other = tmp_path / "one_pass"
    write_micro_setup(other, experts, tiny_model(vocab_size=len(tiny_tokenizer)), tiny_tokenizer)
    one_pass = run_app(other, *common)
    assert one_pass.returncode == 0, one_pass.stderr[-3000:]
    again = {p.name: load_file(p) for p in (other / "cache" / "statistics").glob("*.safetensors")}
    assert sorted(again) == [p.name for p in stored]
    for path in stored:  # float64 sums of one expert alone may differ in the last bit from both at once (AVX2)
        tensors = load_file(path)
        assert sorted(tensors) == sorted(again[path.name])
        for k in tensors:
            torch.testing.assert_close(tensors[k], again[path.name][k], rtol=1e-12, atol=0)
    for a, b in zip(dume_row(tmp_path, "run"), dume_row(other, "run")):
        assert a["scores"] == pytest.approx(b["scores"], rel=1e-9)


@pytest.mark.parametrize("overrides, words", [
    (["calibration.collect_only=[poetry]"], ["calibration.collect_only=['poetry']", "['prose', 'code']"]),
    (["calibration.collect_only=[prose]", "calibration.store_statistics=false"],
     ["needs calibration.store_statistics=true"]),
])
def test_bad_collect_only_is_refused(tmp_path, tiny_tokenizer, monkeypatch, overrides, words):
    experts = make_experts(2, shared_backbone=False, vocab_size=len(tiny_tokenizer))
    write_micro_setup(tmp_path, experts, tiny_model(vocab_size=len(tiny_tokenizer)), tiny_tokenizer)
    monkeypatch.setenv("DUME_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError) as info:
        run_micro(tmp_path, "run", "strategy=[dume]", *overrides)
    for word in words:
        assert word in str(info.value)
    assert not (tmp_path / "cache").exists()
