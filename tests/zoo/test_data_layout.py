"""The data layout: file names per split, paths, reading and atomic writing of JSON-lines rows."""
from __future__ import annotations

import pytest

from dume_exp.utils import data_layout as layout


def test_file_names_and_paths(tmp_path):
    assert [layout.split_file(s) for s in layout.SPLITS] == ["train.jsonl", "validation.jsonl", "test.jsonl"]
    assert layout.set_file("gsm8k") == "gsm8k_test.jsonl" and layout.set_file("gsm8k", "train") == "gsm8k_train.jsonl"
    assert layout.split_path(tmp_path, "math", "test") == tmp_path / "math" / "test.jsonl"
    assert layout.set_path(tmp_path, "multilingual", "arc_de") == tmp_path / "multilingual" / "arc_de_test.jsonl"
    for bad in (lambda: layout.split_file("dev"), lambda: layout.set_file("x", "valid")):
        with pytest.raises(ValueError, match=r"Unknown split .*expected one of \('train', 'validation', 'test'\)"):
            bad()


def test_split_files_and_set_names(tmp_path):
    (tmp_path / "d").mkdir()
    for name in ("train.jsonl", "gsm8k_train.jsonl", "test.jsonl", "gsm8k_test.jsonl", "arc_de_test.jsonl",
                 "notes.txt"):
        (tmp_path / "d" / name).write_text("")
    names = lambda split: [p.name for p in layout.split_files(tmp_path, "d", split)]  # noqa: E731
    assert names("train") == ["train.jsonl"]  # a named train set is a few-shot source, not training data
    assert names("test") == ["arc_de_test.jsonl", "gsm8k_test.jsonl", "test.jsonl"]
    assert layout.set_names(tmp_path, "d") == ["arc_de", "gsm8k"]
    assert layout.set_names(tmp_path, "d", "train") == ["gsm8k"]
    with pytest.raises(FileNotFoundError, match=r"No validation data for domain 'd' under .*d "
                                                r"\(looked for \['validation.jsonl'\]\)"):
        layout.split_files(tmp_path, "d", "validation")


def test_rows_round_trip_byte_exact_and_atomic(tmp_path):
    rows = [{"text": "Grüße\u2028line", "b": 1}, {"a": [1, "\x1e"]}]
    path = tmp_path / "train.jsonl"
    assert layout.write_rows(path, rows) == 2
    assert path.read_bytes() == '{"text": "Grüße\u2028line", "b": 1}\n{"a": [1, "\\u001e"]}\n'.encode()
    assert layout.read_rows(path) == rows  # one row a line: U+2028 is no line break here

    def interrupted():
        yield {"text": "new"}
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        layout.write_rows(path, interrupted())
    assert layout.read_rows(path) == rows and [p.name for p in tmp_path.iterdir()] == ["train.jsonl"]


def test_reading_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": \n')
    rows = layout.numbered_rows(path)
    assert [next(rows), next(rows)] == [(1, {"a": 1}), (3, {"a": 2})]  # blank lines skipped, lines still counted
    with pytest.raises(ValueError, match=r"rows.jsonl:4: not a JSON line"):
        layout.read_rows(path)


def test_load_split(tmp_path):
    (tmp_path / "math").mkdir()
    layout.write_rows(layout.split_path(tmp_path, "math", "test"), [{"text": "a"}, {"text": "b", "n": 1}])
    assert layout.load_split(tmp_path, "math", "test") == ["a", "b"]
    with pytest.raises(ValueError, match="split"):
        layout.load_split(tmp_path, "code", "dev")
    with pytest.raises(FileNotFoundError, match=r"code/test.jsonl: domains in .* are \['math'\]\. .*build_clm_data"):
        layout.load_split(tmp_path, "code", "test")
