"""Run untrusted Python (model-written code plus its tests) isolated by the operating system.

Each program runs under bubblewrap (``bwrap``), the sandbox Flatpak uses, chosen because it builds the whole
jail from one command (namespaces, mounts, environment) with no daemon and no setuid bit, and is one
``apt-get install bubblewrap`` away on Debian/Ubuntu:

* new PID, network, IPC, UTS (and, unprivileged, user) namespaces: the program sees only its own processes,
  has only a loopback of its own, and the whole tree dies with it (the namespace's init exits, or bubblewrap
  is killed at the timeout and its child with it);
* a filesystem made of read-only binds of ``/usr`` and the interpreter's prefix, with fresh ``/proc``,
  ``/dev``, and size-capped tmpfs ``/tmp`` and working folder: nothing of the host (the repository, caches,
  ``/etc``, home folders) is visible, and nothing written survives the run;
* an empty environment; stdin carries only the program; an unprivileged user: as root, ``setpriv`` drops to
  ``SandboxLimits.user`` with no capabilities, an empty bounding set and ``no_new_privs`` before Python starts;
* resource limits (address space, CPU seconds, file size, open files, no core dumps; no processes at all,
  set by the guard before the program runs) and a wall-clock timeout.

:mod:`dume_exp.evaluation.tasks.sandbox_guard` runs inside as defence in depth (Python-level refusals of sockets,
processes and writes) and is the only thing that can report a pass: it sends a per-run token, which the
program never sees, after the program ran to its end without raising, so ``sys.exit(0)``, ``os._exit(0)``,
``unittest.main()`` or a killed process are failures.

Where bubblewrap is missing or the kernel refuses namespaces, :func:`run_python` refuses to run anything
unless ``SandboxLimits.unsafe_without_isolation`` is set (lm-eval's ``confirm_run_unsafe_code`` convention);
then only the limits and the guard stand between the program and the machine, and results say so
(``SandboxResult.isolated``).
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import resource
import secrets
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
INSIDE_GUARD = "/.sandbox_guard.py"
INSIDE_ROOT = "/sandbox"
ISOLATED, UNISOLATED = "bubblewrap", "unisolated (resource limits and Python guard only)"
_TIMEOUT_CODES = {-signal.SIGXCPU, -signal.SIGKILL, 128 + signal.SIGXCPU, 128 + signal.SIGKILL}


class SandboxUnavailable(RuntimeError):
    """Generated code would run without operating-system isolation and the user did not opt in."""


@dataclass(frozen=True)
class SandboxLimits:
    """Limits for one sandboxed run (``cpu_s=None`` means ``ceil(timeout_s) + 1``).

    ``unsafe_without_isolation=True`` runs programs even where bubblewrap cannot isolate them.
    """

    timeout_s: float = 5.0
    memory_mb: int = 1024
    cpu_s: int | None = None
    file_size_mb: int = 16
    max_open_files: int = 64
    max_processes: int = 16  # for the sandbox user when the evaluator is root (the guard then lowers it to 0)
    scratch_mb: int = 64  # each of the writable tmpfs: the working folder and /tmp
    max_output_chars: int = 8192
    unsafe_without_isolation: bool = False
    python: str = sys.executable
    bwrap: str = "bwrap"
    user: int = 65534  # the uid/gid programs run as when the evaluator is root (nobody)


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one run: ``"passed"`` (ran to its end without raising), ``"failed"`` or ``"timeout"``."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    isolated: bool

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@functools.lru_cache(maxsize=None)
def _prefixes(python: str) -> tuple[str, ...]:
    """The interpreter's real binary, then its prefix folders (bound read-only into the sandbox)."""
    out = subprocess.run([python, "-S", "-c", "import sys; print(sys.executable); print(sys.base_prefix); "
                          "print(sys.base_exec_prefix)"], capture_output=True, text=True, timeout=30, check=True)
    binary, *prefixes = out.stdout.split("\n")[:3]
    return (os.path.realpath(binary), *dict.fromkeys(os.path.realpath(p) for p in prefixes))


def _root_binds() -> list[str]:
    """``/usr`` read-only, and the merged-/usr links (``/bin`` → ``usr/bin``, ...) as links or binds."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    return args


def _bwrap_command(limits: SandboxLimits, result_fd: int) -> list[str]:
    bwrap = shutil.which(limits.bwrap)
    if bwrap is None:
        raise FileNotFoundError(limits.bwrap)
    binary, *prefixes = _prefixes(limits.python)
    root = os.geteuid() == 0
    scratch = str(limits.scratch_mb * 1024 * 1024)
    cmd = [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
           *([] if root else ["--unshare-user"]), "--die-with-parent", "--new-session", "--clearenv",
           *_root_binds()]
    for prefix in prefixes:
        if not prefix.startswith("/usr/"):
            cmd += ["--ro-bind", prefix, prefix]
    cmd += ["--ro-bind", str(GUARD), INSIDE_GUARD, "--proc", "/proc", "--dev", "/dev",
            "--size", scratch, "--perms", "1777", "--tmpfs", "/tmp",
            "--size", scratch, "--perms", "1777", "--tmpfs", INSIDE_ROOT, "--chdir", INSIDE_ROOT,
            "--remount-ro", "/"]
    for key, value in _environment(INSIDE_ROOT).items():
        cmd += ["--setenv", key, value]
    cmd.append("--")
    if root:  # drop to an unprivileged user with no way back before any of the program's code runs
        cmd += ["/usr/bin/setpriv", f"--reuid={limits.user}", f"--regid={limits.user}", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
    return cmd + [binary, "-s", "-S", "-B", INSIDE_GUARD, INSIDE_ROOT, str(result_fd)]


def _environment(folder: str) -> dict[str, str]:
    """The program's whole environment; ``folder`` (its working folder) is also its home and temporary folder."""
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": folder, "TMPDIR": folder,
            "PYTHONHASHSEED": "0", "PYTHONIOENCODING": "utf-8"}


@functools.lru_cache(maxsize=None)
def _probe(bwrap: str, python: str, user: int) -> str | None:
    limits = SandboxLimits(bwrap=bwrap, python=python, user=user, unsafe_without_isolation=True)
    try:
        res = _run(
            "import os\nassert os.getuid() != 0 and os.geteuid() != 0, 'still root'\n", limits, isolated=True)
    except FileNotFoundError:
        return f"bubblewrap ({bwrap!r}) is not installed"
    except (OSError, subprocess.SubprocessError) as err:
        return f"bubblewrap could not start: {err}"
    if not res.passed:
        return f"bubblewrap could not isolate a program here: {(res.stderr.strip() or res.status)[-300:]}"
    return None


def isolation_problem(limits: SandboxLimits = SandboxLimits()) -> str | None:
    """Why this machine cannot isolate programs with ``limits`` (``None`` when it can); probed once."""
    return _probe(limits.bwrap, limits.python, limits.user)


def require_isolation(limits: SandboxLimits = SandboxLimits()) -> bool:
    """Whether programs will run isolated; raises :class:`SandboxUnavailable` when they cannot and the user
    did not opt in. Call it before long work whose scoring executes generated code."""
    problem = isolation_problem(limits)
    if problem is None:
        return True
    if limits.unsafe_without_isolation:
        return False
    raise SandboxUnavailable(
        f"Refusing to execute generated code without isolation: {problem}. Install bubblewrap "
        "(Debian/Ubuntu: apt-get install bubblewrap; `make install` does it as root) on a kernel that allows "
        "namespaces, or opt in to running it with only resource limits and a Python guard "
        "(eval.unsafe_code=true; SandboxLimits(unsafe_without_isolation=True)); such scores are marked.")


def _set_limits(limits: SandboxLimits) -> None:
    cpu = limits.cpu_s if limits.cpu_s is not None else math.ceil(limits.timeout_s) + 1
    mb = 1024 * 1024
    for which, value in ((resource.RLIMIT_AS, limits.memory_mb * mb), (resource.RLIMIT_CPU, cpu),
                         (resource.RLIMIT_FSIZE, limits.file_size_mb * mb),
                         (resource.RLIMIT_NOFILE, limits.max_open_files), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(which, (value, value))
    if os.geteuid() == 0:  # counts once setpriv has dropped to limits.user (root is exempt; an unprivileged
        # evaluator's own processes would count against it, so there only the guard's zero applies)
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes))


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


def _reported(fd: int) -> bytes:
    """What the guard wrote on the result pipe (nothing if it never reached the end)."""
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 256)
    except BlockingIOError:
        return b""


@contextlib.contextmanager
def _unisolated_folder():
    folder = tempfile.mkdtemp(prefix="dume_sandbox_")
    try:
        yield folder
    finally:
        _remove_tree(folder)


def _run(source: str, limits: SandboxLimits, isolated: bool) -> SandboxResult:
    token = secrets.token_hex(16).encode()
    read_end, write_end = os.pipe()
    with contextlib.ExitStack() as stack:
        stack.callback(os.close, read_end)
        if isolated:
            cmd, cwd, env = _bwrap_command(limits, write_end), None, {"PATH": "/usr/bin:/bin"}
        else:
            cwd = stack.enter_context(_unisolated_folder())
            cmd = [limits.python, "-s", "-S", "-B", str(GUARD), cwd, str(write_end)]
            env = _environment(cwd)
        out, err = stack.enter_context(tempfile.TemporaryFile()), stack.enter_context(tempfile.TemporaryFile())
        start = time.perf_counter()
        try:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=out, stderr=err,
                                    start_new_session=True, pass_fds=(write_end,),
                                    preexec_fn=functools.partial(_set_limits, limits))
        finally:
            os.close(write_end)
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(token + b"\n" + source.encode("utf-8"))
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        if _exited_within(proc, limits.timeout_s):
            returncode = proc.wait()
            timed_out = returncode in _TIMEOUT_CODES
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            returncode, timed_out = None, True
        wall = time.perf_counter() - start
        passed = not timed_out and _reported(read_end) == token
        status = "timeout" if timed_out else ("passed" if passed else "failed")
        return SandboxResult(status, returncode, _read_truncated(out, limits.max_output_chars),
                             _read_truncated(err, limits.max_output_chars), wall, isolated)


def run_python(source: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Execute ``source`` as a Python program in a fresh sandbox and report how it ended.

    A run passes only when the program's last statement completed; raises :class:`SandboxUnavailable` where
    programs cannot be isolated and ``limits.unsafe_without_isolation`` is not set.
    """
    return _run(source, limits, isolated=require_isolation(limits))
