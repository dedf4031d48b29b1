"""Run the app under jemalloc when the system has it (Linux; ``apt install libjemalloc2``).

With glibc's allocator a long run slowed down from one candidate to the next: late in the reasoning
experiment a quarter of the decoding time went to ``posix_memalign`` on a fragmented heap, and DUME's
instruction-following generation took 215 s against 29 s in a fresh process. ``DUME_MALLOC=system`` keeps glibc.
"""
from __future__ import annotations

import os
import sys

JEMALLOC_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
    "/usr/lib/libjemalloc.so.2",
    "/usr/local/lib/libjemalloc.so.2",
)


def find_jemalloc() -> str | None:
    """Path of the system's jemalloc shared library, or ``None``."""
    return next((p for p in JEMALLOC_CANDIDATES if os.path.exists(p)), None)


def active_allocator() -> str:
    """``"jemalloc"`` when it is preloaded into this process, else ``"system"``."""
    return "jemalloc" if "jemalloc" in os.environ.get("LD_PRELOAD", "") else "system"


def reexec_with_jemalloc(module: str) -> None:
    """Replace this process by ``python -m module <same arguments>`` with jemalloc preloaded, when it is
    installed, not already active, and ``DUME_MALLOC`` is not ``system``; otherwise return."""
    if os.environ.get("DUME_MALLOC", "jemalloc") == "system" or not sys.platform.startswith("linux"):
        return
    if active_allocator() == "jemalloc" or (lib := find_jemalloc()) is None:
        return
    preload = ":".join(p for p in (lib, os.environ.get("LD_PRELOAD", "")) if p)
    sys.stdout.flush(), sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], {**os.environ, "LD_PRELOAD": preload})
