"""Replace a whole folder atomically: a reader (or a kill) sees the old folder or the complete new one, never a mix."""
from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

_AT_FDCWD = -100  # renameat2: paths relative to the working directory
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the platform, the C
    library or the file system does not offer it."""
    rename = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None) if sys.platform == "linux" else None
    if rename is None:
        return False
    rename.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if rename(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _work_dir(dest: Path) -> Path:
    """The sibling folder in which the replacement of ``dest`` is prepared (same file system, so renames are atomic).
    ``save_pretrained`` stages its files beside its target, so its leftovers land in here too."""
    return dest.parent / f".{dest.name}.dume-update"


def recover_interrupted_update(dest: str | Path) -> None:
    """Finish or undo a :func:`replace_folder` of ``dest`` that was killed: put the old folder back if the kill
    came between the two renames of the fallback swap, and delete what the update left aside."""
    dest = Path(dest).resolve()
    work = _work_dir(dest)
    if not work.exists():
        return
    if (work / "old").exists() and not dest.exists():
        os.rename(work / "old", dest)
    shutil.rmtree(work)


def _swap_in(new: Path, dest: Path, aside: Path) -> None:
    """Make ``new`` the folder ``dest``: one atomic rename or exchange; else ``dest`` → ``aside``, then ``new`` →
    ``dest`` (a kill in between is undone by :func:`recover_interrupted_update`)."""
    if not dest.exists():
        os.rename(new, dest)
    elif not _exchange(new, dest):
        os.rename(dest, aside)
        os.rename(new, dest)


def check_replaceable(dest: Path) -> None:
    """Raise ``FileExistsError`` unless ``dest`` is missing, an empty folder or a saved model folder (one with
    config.json): anything else would be replaced as a whole."""
    if dest.exists() and not (dest.is_dir() and (not any(dest.iterdir()) or (dest / "config.json").exists())):
        raise FileExistsError(f"{dest} exists and is not a model folder; it would be replaced as a whole. Pass a new "
                              "or empty folder, or a saved model folder.")


def replace_folder(dest: str | Path, write: Callable[[Path], None]) -> None:
    """Replace the folder ``dest`` by the one ``write(folder)`` fills, so that ``dest`` is at every moment either
    the old folder (or absent, if it was) or the complete new one.

    The new folder is written into a sibling work folder and swapped in with Linux
    ``renameat2(RENAME_EXCHANGE)``: one atomic step, no moment without ``dest``. Where that is unavailable (other
    systems, some file systems) ``dest`` is renamed aside and the new folder renamed in; a kill between those two
    renames leaves ``dest`` missing until :func:`recover_interrupted_update` (run by the CLI at its next start)
    moves the old folder back. ``dest`` is replaced as a whole: files ``write`` does not write are not kept.
    One update of a given ``dest`` at a time.
    """
    dest = Path(dest).resolve()
    work = _work_dir(dest)
    recover_interrupted_update(dest)
    work.mkdir(parents=True)
    try:
        write(work / "new")
        _swap_in(work / "new", dest, work / "old")
    finally:
        recover_interrupted_update(dest)
