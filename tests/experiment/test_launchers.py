"""Sweeps through Hydra's submitit launcher: every cell runs as its own job, and a rerun skips finished cells."""
import json

import pytest

from tests.helpers import compose_app, make_experts, run_app, tiny_model, write_micro_setup

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the slurm extra (hydra-submitit-launcher)")


@pytest.mark.slow
def test_a_lambda_sweep_through_submitit_runs_each_cell_as_a_job_and_resumes(tmp_path, tiny_tokenizer):
    experts = make_experts(2, shared_backbone=True, vocab_size=len(tiny_tokenizer))
    write_micro_setup(tmp_path, experts, tiny_model(vocab_size=len(tiny_tokenizer)), tiny_tokenizer)
    sweep = ("hydra/launcher=local", "router.lam=0.01,0.5", "strategy=[dense_expert,dume]", "logger=none")
    first = run_app(tmp_path, *sweep, f"hydra.sweep.dir={tmp_path}/multirun", "--multirun")
    assert first.returncode == 0, first.stderr[-3000:]
    jobs = sorted((tmp_path / "multirun" / ".submitit").glob("*/*_result.pkl"))
    assert len(jobs) == 2  # one submitit job per cell
    cells = sorted((tmp_path / "results" / "clm" / "cells").glob("*.json"))
    assert sorted(json.loads(c.read_text())["config"]["router"]["lam"] for c in cells) == [0.01, 0.5]
    stamps = {c: c.stat().st_mtime_ns for c in cells}
    again = run_app(tmp_path, *sweep, f"hydra.sweep.dir={tmp_path}/multirun_again", "--multirun")
    assert again.returncode == 0, again.stderr[-3000:]
    logs = "".join(p.read_text() for p in (tmp_path / "multirun_again").rglob("*.log"))
    assert logs.count("already finished; skipping") == 2
    assert {c: c.stat().st_mtime_ns for c in cells} == stamps  # nothing recomputed or rewritten


def test_the_slurm_launcher_config_composes_with_requeue_and_resources():
    cfg = compose_app("+experiment=paper_reasoning", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                      hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert (launcher.gpus_per_node, launcher.max_num_timeout, launcher.timeout_min) == (1, 3, 240)
