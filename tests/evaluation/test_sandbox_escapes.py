"""Escape attempts against the code sandbox, run through ``run_python``, the entry point the HumanEval scorer uses.

Each attempt is a program a hostile completion could contain; each must fail and leave no trace on the host
(no file written, no connection made, no process left behind, no secret read). They need the operating-system
isolation (bubblewrap); on a machine without it they are skipped with the reason, and the refusal to run code
unisolated is tested instead (tests/test_sandbox.py).
"""
from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from dume_exp.evaluation.tasks.sandbox import SandboxLimits, isolation_problem, run_python

from tests.helpers import REPO

pytestmark = pytest.mark.skipif(bool(isolation_problem()), reason=f"no sandbox isolation: {isolation_problem()}")

LIMITS = SandboxLimits(timeout_s=3.0, memory_mb=256)
MARKER = "dume_escape_probe_7f3a"


def _no_marker_processes() -> bool:
    """No process on the host carries the marker in its command line."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if MARKER.encode() in cmdline.read_bytes():
                return False
        except OSError:
            continue
    return True


@pytest.fixture
def repo_file():
    """A path inside the repository that a program tries to create; removed afterwards should it appear."""
    path = REPO / f".{MARKER}"
    yield path
    path.unlink(missing_ok=True)


WRITERS = {
    "posix.system": "import posix\nposix.system('touch {out}/a; touch {repo}')",
    "_io.open": "import _io\n_io.open('{out}/b', 'w').write('x')\n_io.open('{repo}', 'w').write('x')",
    "importlib.reload(os)": "import importlib, os\nos = importlib.reload(os)\nos.system('touch {out}/c')\n"
                            "open('{repo}', 'w').write('x')",
    "ctypes system": "import ctypes\nctypes.CDLL(None).system(b'touch {out}/d {repo}')",
    "ctypes open": "import ctypes\nlibc = ctypes.CDLL(None)\nlibc.open(b'{out}/e', 0o101, 0o644)\n"
                   "libc.open(b'{repo}', 0o101, 0o644)",
    "posix.open": "import posix\nposix.open('{out}/f', posix.O_CREAT | posix.O_WRONLY)",
    "builtins restored": "import builtins, _io\nbuiltins.open = _io.open\nopen('{out}/g', 'w').write('x')",
    "symlink out of /tmp": "import posix\nposix.symlink('{out}', '/tmp/link')\nopen('/tmp/link/h', 'w').write('x')",
}


@pytest.mark.parametrize("attempt", sorted(WRITERS))
def test_writes_outside_the_sandbox_fail(attempt, tmp_path, repo_file):
    run_python(WRITERS[attempt].format(out=tmp_path, repo=repo_file), LIMITS)
    assert list(tmp_path.iterdir()) == [] and not repo_file.exists()


def test_host_tmp_is_private(tmp_path):
    name = f"/tmp/{MARKER}_{os.getpid()}"
    res = run_python(f"import _io\n_io.open({name!r}, 'w').write('x')\nprint(open({name!r}).read())", LIMITS)
    assert res.passed and res.stdout.strip() == "x"  # the sandbox's own /tmp works...
    assert not Path(name).exists()  # ...and is not the host's


SECRETS = {
    "/etc/shadow": "print(open('/etc/shadow').read())",
    "parent environ": "import os\nprint(open(f'/proc/{{os.getppid()}}/environ', 'rb').read())",
    "evaluator environ": "print(open('/proc/{pid}/environ', 'rb').read())",
    "evaluator via ctypes": "import ctypes\nlibc = ctypes.CDLL(None)\nfd = libc.open(b'/proc/{pid}/environ', 0)\n"
                            "buf = ctypes.create_string_buffer(4096)\nn = libc.read(fd, buf, 4096)\n"
                            "print('read', n, buf.raw[:max(n, 0)])",
    "a host file": "print(open('{secret}').read())",
    "repository source": "print(open('{repo}').read())",
}


@pytest.mark.parametrize("attempt", sorted(SECRETS))
def test_secrets_of_the_host_stay_unread(attempt, tmp_path):
    secret = tmp_path / "token"
    secret.write_text(MARKER)
    program = SECRETS[attempt].format(pid=os.getpid(), secret=secret, repo=REPO / "pyproject.toml")
    res = run_python(program, LIMITS)
    leaked = res.stdout + res.stderr
    for needle in (MARKER, "PATH=", "root:", "[project]"):
        assert needle not in leaked
    assert "read -1" in leaked or not res.passed


def test_signals_cannot_reach_host_processes():
    res = run_python(f"import ctypes\nprint('rc', ctypes.CDLL(None).kill({os.getpid()}, 0))", LIMITS)
    assert res.passed and res.stdout.split() == ["rc", "-1"]  # ESRCH: the evaluator is not in the sandbox's view


def test_fork_bomb_is_bounded_and_leaves_nothing():
    program = ("import posix, time\nborn = 0\n"
               "for _ in range(50):\n"
               "    try:\n        pid = posix.fork()\n    except OSError:\n        break\n"
               "    if pid == 0:\n        posix.execv('/bin/sh', ['sh', '-c', 'sleep 30; : " + MARKER + "'])\n"
               "    born += 1\nprint('born', born)\n")
    res = run_python(program, LIMITS)
    assert res.passed, res.stderr
    assert res.stdout.split() == ["born", "0"]  # the process limit is zero for the sandbox user
    assert _no_marker_processes()


def test_a_setsid_child_does_not_outlive_the_run():
    program = ("import posix, ctypes\n"
               "libc = ctypes.CDLL(None)\npid = libc.fork()\n"
               "if pid == 0:\n    libc.setsid()\n    posix.execv('/bin/sh', ['sh', '-c', 'sleep 30; : " + MARKER + "'])\n"
               "print('child', pid)\n")
    res = run_python(program, LIMITS)
    time.sleep(0.2)
    assert _no_marker_processes(), res.stdout


def test_a_timed_out_tree_is_killed():
    program = ("import ctypes, posix\nlibc = ctypes.CDLL(None)\n"
               "if libc.fork() == 0:\n    libc.setsid()\n    posix.execv('/bin/sh', ['sh', '-c', 'sleep 30; : " + MARKER + "'])\n"
               "while True:\n    pass\n")
    res = run_python(program, SandboxLimits(timeout_s=1.0, memory_mb=256))
    assert res.status == "timeout"
    time.sleep(0.2)
    assert _no_marker_processes()


class _Listener:
    """A host server on 127.0.0.1 that counts the connections it accepts."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.1)
        self.port = self.server.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                self.accepted.append(self.server.accept()[0])
            except TimeoutError:
                continue

    def close(self) -> int:
        self.stop.set()
        self.thread.join()
        for conn in self.accepted:
            conn.close()
        self.server.close()
        return len(self.accepted)


CONNECT = ("import ctypes, struct\nlibc = ctypes.CDLL(None)\n"
           "def connect():\n"
           "    fd = libc.socket(2, 1, 0)\n"
           "    addr = struct.pack('=H', 2) + struct.pack('!H4s8x', {port}, bytes([127, 0, 0, 1]))\n"
           "    return libc.connect(fd, addr, len(addr))\n")
NETWORK = {
    "socket module": "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)",
    "ctypes connect": CONNECT + "print('rc', connect())",
    "setns into another namespace": CONNECT + (
        "import glob\n"
        "for ns in glob.glob('/proc/*/ns/net'):\n"
        "    fd = libc.open(ns.encode(), 0)\n"
        "    if fd >= 0 and libc.setns(fd, 0x40000000) == 0:\n"
        "        print('joined', ns)\n"
        "print('rc', connect())"),
    "unshare then connect": CONNECT + "libc.unshare(0x40000000)\nprint('rc', connect())",
}


@pytest.mark.parametrize("attempt", sorted(NETWORK))
def test_no_connection_reaches_the_host(attempt):
    listener = _Listener()
    try:
        res = run_python(NETWORK[attempt].format(port=listener.port), LIMITS)
    finally:
        connections = listener.close()
    assert connections == 0, res.stdout
    assert "rc 0" not in res.stdout and "joined" not in res.stdout


def test_binding_inside_the_sandbox_stays_inside():
    """A server the program binds on its own loopback is not reachable from the host."""
    program = ("import ctypes, struct, time\nlibc = ctypes.CDLL(None)\nfd = libc.socket(2, 1, 0)\n"
               "addr = struct.pack('=H', 2) + struct.pack('!H4s8x', {port}, bytes([127, 0, 0, 1]))\n"
               "print('bind', libc.bind(fd, addr, len(addr)), libc.listen(fd, 1))\ntime.sleep(1.0)\n")
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    done = threading.Event()
    reached = []

    def try_connect():
        while not done.is_set():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                reached.append(True)
                return
            except OSError:
                time.sleep(0.05)

    thread = threading.Thread(target=try_connect)
    thread.start()
    run_python(program.format(port=port), LIMITS)
    done.set()
    thread.join()
    assert not reached
