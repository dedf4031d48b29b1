"""atomic_dir under real concurrent processes: commits of one key all succeed, a reader never sees a partial entry,
and a published entry that verifies is kept, not replaced. No torch: processes are forked and only touch files."""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

from dume_exp.utils.cache import atomic_dir

NAMES = [f"part{i:02d}.txt" for i in range(40)]
WRITERS, COMMITS = 4, 15
CTX = mp.get_context("fork")


def _commit(final: Path) -> None:
    """One commit of the entry (the same content every time: keys are content addresses)."""
    with atomic_dir(final) as tmp:
        for name in NAMES:
            (tmp / name).write_text(name * 500)


def _writer(final: str, start: float) -> list[str]:
    """Commit ``final`` COMMITS times from ``start`` on; the errors raised."""
    time.sleep(max(0.0, start - time.time()))
    errors = []
    for _ in range(COMMITS):
        try:
            _commit(Path(final))
        except OSError as e:
            errors.append(repr(e))
    return errors


def _reader(final: str, stop, out) -> None:
    """Poll the published entry until ``stop``; report (files missing over all polls, polls)."""
    missing = polls = 0
    while not stop.is_set():
        missing += sum(not os.path.exists(os.path.join(final, name)) for name in NAMES)
        polls += 1
    out.put((missing, polls))


def _run_writers(final: Path) -> list[str]:
    with CTX.Pool(WRITERS) as pool:
        start = time.time() + 0.3
        return [e for errors in pool.starmap(_writer, [(str(final), start)] * WRITERS) for e in errors]


def _complete(final: Path) -> bool:
    return all((final / name).read_text() == name * 500 for name in NAMES)


def test_concurrent_commits_of_one_key_all_succeed(tmp_path):
    final = tmp_path / "entry"
    errors = _run_writers(final)
    assert errors == [], f"{len(errors)} of {WRITERS * COMMITS} commits failed, e.g. {errors[:2]}"
    assert _complete(final)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]  # no temporary folder left behind


def test_a_reader_never_sees_a_partial_entry(tmp_path):
    final = tmp_path / "entry"
    _commit(final)
    stop, out = CTX.Event(), CTX.Queue()
    reader = CTX.Process(target=_reader, args=(str(final), stop, out))
    reader.start()
    try:
        errors = _run_writers(final)
    finally:
        stop.set()
        missing, polls = out.get(timeout=60)
        reader.join(timeout=60)
    assert polls > 0
    assert missing == 0, f"the reader saw {missing} missing files in {polls} polls of a published entry"
    assert errors == []
    assert _complete(final)


def test_an_existing_verified_entry_is_kept(tmp_path):
    final = tmp_path / "entry"
    _commit(final)
    before = {p.name: p.stat().st_ino for p in [final, *final.iterdir()]}
    _commit(final)
    assert {p.name: p.stat().st_ino for p in [final, *final.iterdir()]} == before  # not deleted and rewritten
    assert _complete(final)
