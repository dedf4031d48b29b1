"""Child-side guard for the code sandbox; run as ``python -s -S -B sandbox_guard.py ROOT RESULT_FD``.

It is executed by the sandboxed interpreter (never imported by the parent). It reads a token line and then
the program from stdin, writes the program to ``ROOT/program.py`` (so tracebacks show its lines), lowers
the process limit to zero, and disables, in Python, what a generated solution has no business doing:
sockets and name lookups, spawning or signalling processes, writing outside ROOT. The Python refusals are
defence in depth under the operating-system isolation of the parent (a determined program can undo them;
the namespaces and limits it cannot). The program runs as module ``__sandbox__`` (so ``__main__`` blocks do
not run, as in the reference HumanEval harness); only if it completes without raising is the token written
to RESULT_FD, which is how the parent tells a pass from ``sys.exit(0)``, ``os._exit(0)`` or a kill.
"""
import builtins
import io
import os
import resource
import sys
import traceback
import types

ROOT = os.path.realpath(sys.argv[1])
RESULT_FD = int(sys.argv[2])
PROGRAM = os.path.join(ROOT, "program.py")


def _inside_root(path) -> bool:
    if isinstance(path, int):  # an already-open descriptor: its opening was checked
        return True
    real = os.path.realpath(os.fsdecode(path))
    return real == ROOT or real.startswith(ROOT + os.sep)


def _refuse(what: str):
    def blocked(*args, **kwargs):
        raise PermissionError(f"{what} is disabled in the sandbox")
    return blocked


def _guard_network() -> None:
    # Patched at the C-module level before ``socket`` is imported: socket.py subclasses
    # ``_socket.socket``, calls its ``__init__`` and re-exports these functions, so every socket made
    # through the standard library goes through the refusals below (importing socket here would
    # also add ~10 ms to every run).
    import _socket

    class NoSocket(_socket.socket):
        __slots__ = ()  # socket.socket, subclassing this, declares __weakref__ itself

        def __init__(self, *args, **kwargs):
            raise PermissionError("network access is disabled in the sandbox")

    _socket.socket = _socket.SocketType = NoSocket
    for name in ("socketpair", "getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo"):
        if hasattr(_socket, name):
            setattr(_socket, name, _refuse(f"network call {name}"))


def _guard_processes() -> None:
    import _posixsubprocess  # subprocess binds fork_exec from here when it is first imported

    names = ("fork", "forkpty", "system", "popen", "kill", "killpg", "posix_spawn", "posix_spawnp",
             "execv", "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe",
             "spawnv", "spawnve", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnvp", "spawnvpe")
    for name in names:
        if hasattr(os, name):
            setattr(os, name, _refuse(f"os.{name}"))
    _posixsubprocess.fork_exec = _refuse("process creation")


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _guard_files() -> None:
    real_open, real_os_open, real_fileio = builtins.open, os.open, io.FileIO

    def checked(path, writing: bool, what: str) -> None:
        if writing and not _inside_root(path):
            raise PermissionError(f"{what} outside the sandbox folder is disabled: {path!r}")

    def guarded_open(file, mode="r", *args, **kwargs):
        checked(file, any(c in mode for c in "wax+"), "writing")
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        checked(path, bool(flags & _WRITE_FLAGS), "writing")
        return real_os_open(path, flags, *args, **kwargs)

    class GuardedFileIO(real_fileio):
        def __init__(self, file, mode="r", *args, **kwargs):
            checked(file, any(c in mode for c in "wax+"), "writing")
            super().__init__(file, mode, *args, **kwargs)

    builtins.open = io.open = guarded_open
    os.open = guarded_os_open
    io.FileIO = GuardedFileIO

    def path_guard(name: str, n_paths: int):
        real = getattr(os, name)

        def guarded(*args, **kwargs):
            for path in args[:n_paths]:
                checked(path, True, f"os.{name}")
            return real(*args, **kwargs)
        setattr(os, name, guarded)

    for name, n_paths in (("remove", 1), ("unlink", 1), ("rmdir", 1), ("mkdir", 1), ("makedirs", 1),
                          ("removedirs", 1), ("chmod", 1), ("chown", 1), ("lchown", 1), ("truncate", 1),
                          ("utime", 1), ("mkfifo", 1), ("mknod", 1), ("rename", 2), ("replace", 2),
                          ("renames", 2), ("link", 2), ("symlink", 2)):
        if hasattr(os, name):
            path_guard(name, n_paths)


def _read_input() -> tuple[bytes, str]:
    """The token and the program from stdin, which is then replaced by /dev/null."""
    token, _, source = sys.stdin.buffer.read().partition(b"\n")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return token, source.decode("utf-8")


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except Exception:  # the program may have replaced or closed them
            pass


def main() -> None:
    if sys.path and sys.path[0] == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]  # the program must not import this package's modules
    token, source = _read_input()
    with open(PROGRAM, "w", encoding="utf-8") as f:
        f.write(source)
    module = types.ModuleType("__sandbox__")
    module.__file__, module.__builtins__ = PROGRAM, builtins
    sys.modules["__sandbox__"] = module
    # No new processes or threads for this user from here on (the kernel ignores it for root, which the
    # isolated sandbox never is).
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    _guard_network()
    _guard_files()
    _guard_processes()
    sys.argv = [PROGRAM]
    try:
        exec(compile(source, PROGRAM, "exec"), module.__dict__)
    except BaseException:  # SystemExit and KeyboardInterrupt included: only completing counts as a pass
        traceback.print_exc()
        _flush()
        os._exit(1)
    _flush()
    os.write(RESULT_FD, token)
    os._exit(0)


if __name__ == "__main__":
    main()
