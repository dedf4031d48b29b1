"""The app re-executes itself under jemalloc when it is installed, once, and never when told not to."""
import pytest

from dume_exp.utils import allocator


@pytest.fixture
def calls(monkeypatch):
    seen = []
    monkeypatch.setattr(allocator.os, "execve", lambda exe, argv, env: seen.append((argv, env)))
    monkeypatch.setattr(allocator.sys, "argv", ["/x/dume_exp/__main__.py", "+experiment=clm", "seed=1"])
    monkeypatch.setattr(allocator.sys, "platform", "linux")
    monkeypatch.setattr(allocator, "find_jemalloc", lambda: "/lib/libjemalloc.so.2")
    monkeypatch.delenv("DUME_MALLOC", raising=False)
    return seen


def test_reexec_preloads_jemalloc_with_the_same_arguments(calls, monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/lib/other.so")
    allocator.reexec_with_jemalloc("dume_exp")
    ((argv, env),) = calls
    assert argv[1:] == ["-m", "dume_exp", "+experiment=clm", "seed=1"]
    assert env["LD_PRELOAD"] == "/lib/libjemalloc.so.2:/lib/other.so"


@pytest.mark.parametrize("setting", ["opt_out", "already_active", "not_installed"])
def test_no_reexec(calls, monkeypatch, setting):
    if setting == "opt_out":
        monkeypatch.setenv("DUME_MALLOC", "system")
    elif setting == "already_active":
        monkeypatch.setenv("LD_PRELOAD", "/lib/libjemalloc.so.2")
    else:
        monkeypatch.setattr(allocator, "find_jemalloc", lambda: None)
    allocator.reexec_with_jemalloc("dume_exp")
    assert calls == []
