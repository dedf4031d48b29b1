"""Run untrusted Python (model-written code plus its tests) in a sandboxed child process.

Layers, from the operating system up:

* a fresh temporary folder as working directory and ``HOME``/``TMPDIR``, removed afterwards;
* resource limits set in ``preexec_fn``: address space (``RLIMIT_AS``), CPU seconds, file size,
  open files, no core dumps; a wall-clock timeout that kills the whole process group;
* a private network namespace (``unshare --net``, or ``unshare --user --map-root-user --net``
  unprivileged) when the machine permits it — probed once, silently skipped otherwise;
* an interpreter without site-packages or user site (``-s -S -B``) in a minimal environment
  (fixed ``PYTHONHASHSEED``), stdin closed, and stdout/stderr captured to anonymous files
  (bounded by the file-size limit) then truncated;
* :mod:`dume_exp.tasks.sandbox_guard`, which disables sockets, process creation and writes outside
  the folder in Python before the program runs (it also drops ``RLIMIT_NPROC`` to 0).

Model code never runs in the parent process.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import resource
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

GUARD = Path(__file__).with_name("sandbox_guard.py")
_PROGRAM = "program.py"


@dataclass(frozen=True)
class SandboxLimits:
    """Limits for one sandboxed run (``cpu_s=None`` means ``ceil(timeout_s) + 1``)."""

    timeout_s: float = 5.0
    memory_mb: int = 1024
    cpu_s: int | None = None
    file_size_mb: int = 16
    max_open_files: int = 64
    max_output_chars: int = 8192
    isolate_network: bool = True
    python: str = sys.executable


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one run: ``status`` is ``"passed"`` (exit 0), ``"failed"`` or ``"timeout"``."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    network_namespace: bool

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@functools.lru_cache(maxsize=None)
def network_namespace_prefix() -> tuple[str, ...]:
    """The ``unshare`` command prefix that gives a child an empty network namespace, or ``()``.

    Probed once per process: root (or CAP_SYS_ADMIN) can use ``unshare --net`` directly; otherwise
    an unprivileged user namespace is needed, which some kernels and container runtimes forbid.
    """
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    candidates = [(unshare, "--net")] if os.geteuid() == 0 else []
    candidates.append((unshare, "--user", "--map-root-user", "--net"))
    for prefix in candidates:
        try:
            probe = subprocess.run([*prefix, "true"], stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return prefix
    return ()


def _set_limits(limits: SandboxLimits) -> None:
    cpu = limits.cpu_s if limits.cpu_s is not None else math.ceil(limits.timeout_s) + 1
    mb = 1024 * 1024
    for which, value in ((resource.RLIMIT_AS, limits.memory_mb * mb), (resource.RLIMIT_CPU, cpu),
                         (resource.RLIMIT_FSIZE, limits.file_size_mb * mb),
                         (resource.RLIMIT_NOFILE, limits.max_open_files), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(which, (value, value))


def _read_truncated(f, limit: int) -> str:
    f.seek(0)
    data = f.read(4 * limit + 4).decode("utf-8", errors="replace")
    return data if len(data) <= limit else data[:limit] + "\n...[truncated]"


def _remove_tree(path: str) -> None:
    def make_writable_and_retry(func, p, _exc):
        os.chmod(os.path.dirname(p), stat.S_IRWXU)
        if os.path.isdir(p) and not os.path.islink(p):
            os.chmod(p, stat.S_IRWXU)
        func(p)
    shutil.rmtree(path, onerror=make_writable_and_retry)


def _exited_within(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``proc`` to exit, without reaping it.

    A pidfd wakes up the moment the child exits (``Popen.wait(timeout)`` polls with sleeps of up to
    50 ms, which would dominate the cost of a short test); elsewhere it falls back to polling.
    """
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


def run_python(source: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Execute ``source`` as a Python program in a fresh sandbox and report how it ended."""
    prefix = network_namespace_prefix() if limits.isolate_network else ()
    workdir = tempfile.mkdtemp(prefix="dume_sandbox_")
    try:
        Path(workdir, _PROGRAM).write_text(source, encoding="utf-8")
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": workdir,
               "TMPDIR": workdir, "PYTHONHASHSEED": "0", "PYTHONIOENCODING": "utf-8"}
        cmd = [*prefix, limits.python, "-s", "-S", "-B", str(GUARD), workdir, _PROGRAM]
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=err, start_new_session=True, close_fds=True,
                                    preexec_fn=functools.partial(_set_limits, limits))
            if _exited_within(proc, limits.timeout_s):
                returncode = proc.wait()
                timed_out = returncode in (-signal.SIGXCPU, -signal.SIGKILL)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                returncode, timed_out = None, True
            wall = time.perf_counter() - start
            status = "timeout" if timed_out else ("passed" if returncode == 0 else "failed")
            return SandboxResult(status, returncode, _read_truncated(out, limits.max_output_chars),
                                 _read_truncated(err, limits.max_output_chars), wall, bool(prefix))
    finally:
        _remove_tree(workdir)
