"""Content-addressed cache: artifacts live under a key that hashes their recipe, written atomically and durably.

Files and folders are fsynced before they are published by rename, so a reader sees no entry or a complete one and
a power loss leaves no empty file behind. Folders (:func:`atomic_dir`) are never replaced once published: they
carry a sha256 of every file, and a second commit of the same key keeps the existing entry when it verifies. JSON
objects written with :func:`write_checked_json` carry the sha256 of their content. An entry that fails its check
is moved aside to ``<name>.corrupt-<timestamp>`` with a warning (:func:`quarantine`) so that it is recomputed.
Entries written before the checksums existed carry none; they are read as they are (unverified).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

#: Inside every folder written by :func:`atomic_dir`: ``{relative path: sha256}`` of its files.
DIGEST_FILE = ".dume-digest.json"
#: Key of the content checksum in a JSON object written by :func:`write_checked_json`.
CHECKSUM_KEY = "content_sha256"


class CorruptEntryError(ValueError):
    """A cache entry or results file that cannot be read or fails its checksum."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path} is corrupt: {problem}. Delete it (or move it aside) and rerun to recompute it.")


def cache_root() -> Path:
    """``$DUME_CACHE`` if set, else ``$XDG_CACHE_HOME/dume_exp`` (default ``~/.cache/dume_exp``)."""
    env = os.environ.get("DUME_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "dume_exp"


def _stable(obj: Any) -> str:
    """A run-independent stand-in for values JSON cannot hold (functions by qualified name, not address)."""
    if callable(obj):
        return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', type(obj).__name__)}"
    return str(obj)


def recipe_key(recipe: Mapping[str, Any], length: int = 16) -> str:
    """Stable hex digest of a recipe (key order does not matter; callables count by qualified name)."""
    blob = json.dumps(recipe, sort_keys=True, separators=(",", ":"), default=_stable)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def quarantine(path: str | Path, problem: str) -> Path:
    """Move a corrupt entry aside to ``<name>.corrupt-<timestamp>`` with a warning naming it; returns the new path."""
    path = Path(path)
    aside = path.with_name(f"{path.name}.corrupt-{datetime.now():%Y%m%d-%H%M%S-%f}")
    with contextlib.suppress(FileNotFoundError):  # another process moved it aside first
        os.rename(path, aside)
    warnings.warn(f"Corrupt cache entry {path}: {problem}. Moved it aside to {aside.name}; it is recomputed.",
                  stacklevel=2)
    return aside


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's (its entries') contents to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tree_digest(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder`` (symbolic links by target, not followed)."""
    digest = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                digest[rel] = f"symlink:{os.readlink(path)}"
            elif path.is_file() and rel != DIGEST_FILE:
                digest[rel] = file_sha256(path)
    return digest


def _seal(folder: Path) -> None:
    """Write ``folder``'s :data:`DIGEST_FILE` and fsync every file and folder in it."""
    digest = _tree_digest(folder)
    (folder / DIGEST_FILE).write_text(json.dumps(digest, indent=1, sort_keys=True))
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            if not (Path(dirpath) / name).is_symlink():
                _fsync(Path(dirpath) / name)
        _fsync(Path(dirpath))


def dir_problem(folder: str | Path) -> str | None:
    """Why a folder written by :func:`atomic_dir` fails its digest (missing or changed files), or None when it
    verifies; a folder from before the digest (no :data:`DIGEST_FILE`) verifies unchecked."""
    folder = Path(folder)
    if not (folder / DIGEST_FILE).exists():
        return None
    try:
        stored = json.loads((folder / DIGEST_FILE).read_text())
    except ValueError as e:
        return f"its {DIGEST_FILE} is unreadable ({e})"
    actual = _tree_digest(folder)
    missing = sorted(set(stored) - set(actual))
    changed = sorted(rel for rel in set(stored) & set(actual) if stored[rel] != actual[rel])
    found = [f"{len(paths)} {what} file(s) {paths[:3]}" for what, paths in (("missing", missing), ("changed", changed))
             if paths]
    return ", ".join(found) or None


def _publish_dir(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final`` if ``final`` is absent. A ``final`` that exists (published first by another
    process or an earlier run) is kept when it verifies (``tmp`` is then discarded) and moved aside when corrupt."""
    for attempt in range(2):
        try:
            os.rename(tmp, final)  # fails with ENOTEMPTY/EEXIST when final exists and is not empty
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        else:
            _fsync(final.parent)
            return
        problem = dir_problem(final)
        if problem is None:
            return
        if attempt:
            raise CorruptEntryError(final, problem)
        quarantine(final, problem)


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it is sealed (digest, fsync) and published as ``final``, on
    error removed.

    A reader sees either no ``final`` or a complete one, never a half-written or half-replaced artifact: a
    published ``final`` is never replaced while it verifies (keys are content addresses, so any complete
    entry is as good as this one), and concurrent commits of one key all succeed.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    tmp.chmod(0o755)
    try:
        yield tmp
        _seal(tmp)
        _publish_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success it is fsynced and renamed to ``final``, on error removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o644)
    try:
        yield Path(tmp)
        _fsync(Path(tmp))
        os.replace(tmp, final)
        _fsync(final.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON (sorted keys) atomically and durably."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _json_sha256(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_checked_json(path: str | Path) -> dict[str, Any]:
    """The JSON object in ``path`` without its checksum, verified; raises :class:`CorruptEntryError` for an empty,
    unparsable or altered file (a file without :data:`CHECKSUM_KEY`, written before it existed, is read as it is)."""
    text = Path(path).read_text(errors="replace")
    if not text.strip():
        raise CorruptEntryError(path, f"the file is empty ({len(text)} bytes), as a write cut by a power loss leaves it")
    try:
        data = json.loads(text)
    except ValueError as e:
        raise CorruptEntryError(path, f"not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise CorruptEntryError(path, f"a JSON {type(data).__name__} where an object was written")
    stored = data.pop(CHECKSUM_KEY, None)
    if stored is not None and stored != (actual := _json_sha256(data)):
        raise CorruptEntryError(path, f"its content sha256 {actual[:12]} differs from the stored {str(stored)[:12]}")
    return data


def write_checked_json(path: str | Path, obj: Mapping[str, Any]) -> None:
    """Write a JSON object with the sha256 of its content under :data:`CHECKSUM_KEY` (atomically, durably); a file
    that already holds the same data is left untouched, so re-publishing a legacy file does not rewrite it."""
    data = json.loads(json.dumps(obj, default=str))
    if not isinstance(data, dict):
        raise TypeError(f"write_checked_json writes JSON objects; got {type(obj).__name__}.")
    path = Path(path)
    with contextlib.suppress(FileNotFoundError, CorruptEntryError):
        if read_checked_json(path) == data:
            return
    write_json_atomic(path, {**data, CHECKSUM_KEY: _json_sha256(data)})


def read_cached_json(path: str | Path) -> dict[str, Any] | None:
    """The verified JSON cache entry at ``path``; None when there is none or it is corrupt (then it is moved aside
    with a warning, see :func:`quarantine`, so the caller recomputes it)."""
    try:
        return read_checked_json(path)
    except FileNotFoundError:
        return None
    except CorruptEntryError as e:
        quarantine(path, e.problem)
        return None
