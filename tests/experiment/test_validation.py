"""Bad settings fail at start-up through the app's own path, naming the key and the fix, before the embedded zoo is
built, a model loaded or a results cell written."""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

import dume_exp.zoo.build
from dume_exp.experiment.config import CONF_DIR, register_configs
from dume_exp.experiment.runner import run

from tests.helpers import REPO

CONF = CONF_DIR
MISSING = "/nonexistent/dume/experts/math"

# (overrides, error type, what the message must name: the key, then the valid choices or the fix)
BAD = {
    "max_tokens": (["router.max_tokens_per_sequence=0"], ValueError, ["router.max_tokens_per_sequence", "≥ 1"]),
    "seeds": (["seeds=[]"], ValueError, ["seeds", "non-empty list", "null"]),
    "domain_limit": (["+eval.domain_limit.maths=10"], ValueError,
                     ["eval.domain_limit", "'maths'", "['math', 'multilingual', 'coding', 'instruction']"]),
    "domain_max_gen_toks": (["+eval.domain_max_gen_toks.maths=10"], ValueError, ["eval.domain_max_gen_toks", "'maths'"]),
    "top_k_0": (["router.top_k=0"], ValueError, ["router.top_k", "≥ 1"]),
    "top_k_5": (["router.top_k=5"], ValueError, ["router.top_k", "between 1 and the number of experts (4)"]),
    "temperature": (["router.temperature=0"], ValueError, ["router.temperature", "finite number > 0"]),
    "plus_key": (["+router.lamb=5"], ValueError, ["'router.lamb'", "valid keys of router", "'lam'"]),
    "lam": (["router.lam=abc"], ValueError, ["router.lam", "'auto'", "'abc'"]),
    "batch_size": (["calibration.batch_size=0"], ValueError, ["calibration.batch_size", "≥ 1"]),
    "limit": (["eval.limit=0"], ValueError, ["eval.limit", "≥ 1"]),
    "zoo_domain": (["experts.domains=[math,maths]", "eval.domain_limit={}"], ValueError,
                   ["experts.domains", "'maths'", "reasoning zoo", "'instruction'"]),
    "folder": (["experts=paper_reasoning", f"experts.models.math={MISSING}"], FileNotFoundError,
               ["experts.models.math", "folder not found", MISSING]),
    "renamed_group": (["+btx.steps=5"], ValueError, ["'btx' is now 'router_training'", "use router_training.steps"]),
    "no_domains": (["experts.domains=[]", "eval.domain_limit={}", "eval.domain_max_gen_toks={}"], ValueError,
                   ["experts.domains", "≥ 2 distinct domains", "[]"]),
    "repeated_domain": (["experts.domains=[math,math]", "eval.domain_limit={}", "eval.domain_max_gen_toks={}"],
                        ValueError, ["experts.domains", "≥ 2 distinct domains", "['math', 'math']"]),
    "processes": (["eval.processes=2"], ValueError, ["eval.processes=2 needs eval.backend=hf"]),
    "checkpoint_order": (["router_training.checkpoints=[0,15,10]"], ValueError,
                         ["router_training.checkpoints=[0, 15, 10]", "10 does not come after 15", "increasing order"]),
    "checkpoint_steps": (["router_training.steps=20", "router_training.checkpoints=[0,25]"], ValueError,
                         ["25 is outside [0, steps=20]", "between 0 and router_training.steps=20"]),
}

# A bad choice of an enumerated setting fails at compose time: (override, what the error must name: the key, the
# value, the valid choices)
BAD_CHOICE = {
    "experts.source": ("hub", "[zoo, pretrained]"),
    "experts.setting": ("reasonin", "[clm, reasoning]"),
    "experts.dtype": ("float33", "[float32, bfloat16, float16, float64]"),
    "experts.vocab": ("truncate", "[align, strict]"),
    "eval.suite": ("zoo_clmm", "[zoo_clm, zoo_reasoning, paper_reasoning]"),
    "eval.split": ("dev", "[train, validation, test]"),
    "eval.protocol": ("lm_eval", "[harness, reference]"),
    "router.statistics": ("approx", "[exact, fast]"),
    "calibration.split": ("tests", "[train, validation, test]"),
    "calibration.text": ("question", "[prompt_answer, prompt]"),
    "logger.kind": ("tensorboard", "[wandb, none]"),
    "eval.backend": ("vlm", "[inmemory, hf, vllm]"),
}


class ZooBuildStarted(Exception):
    """Raised instead of building the embedded zoo (16–21 minutes)."""


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """A fresh, empty ``DUME_CACHE`` and results folder; building the zoo raises :class:`ZooBuildStarted`."""
    (tmp_path / "cache").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "data").mkdir()
    monkeypatch.setenv("DUME_CACHE", str(tmp_path / "cache"))

    def no_zoo(*args, **kwargs):
        raise ZooBuildStarted("the zoo build started before the bad setting was reported")

    monkeypatch.setattr(dume_exp.zoo.build, "ensure_zoo", no_zoo)
    return tmp_path


def compose_app(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=["+experiment=reasoning", *overrides])


def assert_nothing_built(root: Path) -> None:
    assert not list((root / "cache").iterdir()), "the cache is not empty: something was built"
    assert not list(root.glob("results/**/*.json")), "a results cell was written"


@pytest.mark.parametrize("name", list(BAD))
def test_bad_setting_fails_before_any_work(fresh, name):
    overrides, error, words = BAD[name]
    cfg = compose_app("logger=none", f"results_dir={fresh / 'results'}", f"experts.data_dir={fresh / 'data'}",
                      *overrides)
    with pytest.raises(error) as info:
        run(cfg, fresh / "run")
    for word in words:
        assert word in str(info.value)
    assert_nothing_built(fresh)


@pytest.mark.parametrize("key", list(BAD_CHOICE))
def test_bad_choice_fails_at_compose_time(key):
    value, choices = BAD_CHOICE[key]
    with pytest.raises(ConfigCompositionException) as info:
        compose_app(f"{key}={value}")
    message = f"{info.value}\n{info.value.__cause__}"
    assert f"Invalid value '{value}', expected one of {choices}" in message and f"full_key: {key}" in message


def test_the_renamed_btx_group_is_refused():
    """``btx.*`` is ``router_training.*`` now: Hydra refuses ``btx.steps=5`` at compose time (no such key; with
    ``+btx.steps=5``, validation names ``router_training.steps``: ``BAD["renamed_group"]``)."""
    with pytest.raises(ConfigCompositionException, match=r"Could not override 'btx.steps'"):
        compose_app("btx.steps=5")
    assert compose_app("router_training.steps=5").router_training.steps == 5


@pytest.mark.slow
def test_the_app_reports_a_bad_setting_within_seconds(tmp_path):
    """``python -m dume_exp`` itself: the error, no cache, no cell; prints the start-up validation time."""
    env = {**os.environ, "DUME_CACHE": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    (tmp_path / "cache").mkdir()
    cmd = [sys.executable, "-m", "dume_exp", "+experiment=reasoning", "experts.dtype=float33", "logger=none",
           f"results_dir={tmp_path / 'results'}", f"hydra.run.dir={tmp_path / 'run'}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - start
    print(f"start-up validation: {wall:.1f} s from process start to the error")
    assert proc.returncode != 0
    assert ("Invalid value 'float33', expected one of [float32, bfloat16, float16, float64]\n    full_key: experts.dtype"
            in proc.stderr)
    assert_nothing_built(tmp_path)


def test_a_machine_that_cannot_isolate_code_stops_the_run_unless_opted_in(fresh, monkeypatch):
    """Without bubblewrap the coding domain's generated code would run unisolated: refused before any work;
    ``eval.unsafe_code=true`` lets the run go on (here into the zoo build) and the results record it."""
    import dume_exp.experiment.validate as experiment
    from dume_exp.evaluation.tasks import SandboxLimits, SandboxUnavailable

    def no_bwrap(cfg):
        return SandboxLimits(bwrap="/nonexistent/bwrap", unsafe_without_isolation=cfg.eval.unsafe_code)

    monkeypatch.setattr(experiment, "sandbox_limits", no_bwrap)
    args = ("logger=none", f"results_dir={fresh / 'results'}", f"experts.data_dir={fresh / 'data'}")
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap.*eval.unsafe_code=true"):
        run(compose_app(*args), fresh / "run")
    assert_nothing_built(fresh)
    unsafe = compose_app(*args, "eval.unsafe_code=true")
    assert experiment.code_sandbox(unsafe) == experiment.UNISOLATED
    with pytest.raises(ZooBuildStarted):
        run(unsafe, fresh / "run")
    assert experiment.code_sandbox(compose_app(*args, "experts.domains=[math,instruction]")) is None


def test_an_override_of_a_renamed_group_names_the_new_group():
    from dume_exp.cli.run import refuse_renamed_groups

    refuse_renamed_groups(["+experiment=clm", "router_training.steps=5", "router.lam=0.1"])  # current names pass
    for override, fix in (("btx.steps=5", "router_training.steps=..."), ("+btx.lr=1e-3", "router_training.lr=..."),
                          ("btx=default", "router_training=...")):
        with pytest.raises(SystemExit, match=re.escape(f"write {fix} instead of {override}")):
            refuse_renamed_groups(["+experiment=clm", override])
