"""lm-eval evaluation: perplexity vs an independent forward pass, ARC acc_norm, GSM8K/HumanEval/IFEval
scoring on canned responses, protocols and paper configs (the code sandbox: tests/test_sandbox*.py)."""
from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from dume_exp.evaluation.harness import _domain_score, evaluate, run_suite
from dume_exp.evaluation.items import items_score
from dume_exp.evaluation.suites import REASONING_HEADLINES, clm_suite, paper_reasoning_suite, reasoning_suite
from dume_exp.evaluation.tasks import OKAPI_ARC_LANGUAGES, HumanEvalScorer
from dume_exp.evaluation.tasks.protocol import REFERENCE_GENERATION

from tests.helpers import tiny_model

CHATML = ("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}")
CLM_DOCS = {
    "code": ["def f(x):\n    return x + 1\n", "The quick brown fox.", "for i in range(3):\n    print(i)"],
    "german": ["Der schnelle braune Fuchs springt über den faulen Hund.", "Öl und Wasser, 3 Äpfel!"],
}
GSM8K_TRAIN = [{"question": "Tom has 3 pens and buys 2 more. How many pens?", "answer": "3+2=5\n#### 5"},
               {"question": "A box holds 4 eggs. How many eggs in 2 boxes?", "answer": "4*2=8\n#### 8"}]
# question -> (canned response, gold answer), strict-match ok?, flexible-extract ok?
GSM8K_CASES = {
    "What is one plus one?": (" 1+1=2\n#### 2", "1+1=2\n#### 2", True, True),
    "What is two plus two?": (" The answer is 4.", "2+2=4\n#### 4", False, True),
    "What is three plus three?": (" I think 5, no wait, it is 7", "3+3=6\n#### 6", False, False),
    "What is a thousand plus a thousand?": (" #### 2,000", "#### 2000", True, True),
}
HUMANEVAL = [
    {"task_id": "t/0", "prompt": "def add(a, b):\n    \"\"\"Add two numbers.\"\"\"\n", "entry_point": "add",
     "canonical_solution": "    return a + b\n",
     "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"},
    {"task_id": "t/1", "prompt": "def double(x):\n    \"\"\"Twice x.\"\"\"\n", "entry_point": "double",
     "canonical_solution": "    return 2 * x\n", "test": "def check(candidate):\n    assert candidate(4) == 8\n"},
]
HUMANEVAL_COMPLETIONS = {"t/0": "    return a + b\n", "t/1": "    return x + 2\n"}  # the second is wrong
IFEVAL = [  # (row, canned response): 5 instructions, 3 followed; prompts 1 and 3 fully followed
    ({"key": 1, "prompt": "Write about bread, mention banana, no commas.",
      "instruction_id_list": ["punctuation:no_comma", "keywords:existence"], "kwargs": [{}, {"keywords": ["banana"]}]},
     "I like banana bread"),
    ({"key": 2, "prompt": "Greet the world in lowercase without commas.",
      "instruction_id_list": ["change_case:english_lowercase", "punctuation:no_comma"], "kwargs": [{}, {}]},
     "Hello, World"),
    ({"key": 3, "prompt": "Describe the sea in fewer than 3 sentences.",
      "instruction_id_list": ["length_constraints:number_sentences"],
      "kwargs": [{"relation": "less than", "num_sentences": 3}]},
     "The sea is blue. It is large."),
]


def _write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module", autouse=True)
def datasets_cache(tmp_path_factory):
    """Keep the datasets json builder's Arrow cache out of the user's HF cache."""
    import datasets.config

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_datasets"))
        yield


@pytest.fixture(scope="module")
def nltk_data(tmp_path_factory) -> Path:
    """A minimal punkt_tab folder (abbreviations only) so IFEval's sentence splitting works offline."""
    root = tmp_path_factory.mktemp("nltk_data")
    english = root / "tokenizers" / "punkt_tab" / "english"
    english.mkdir(parents=True)
    (english / "abbrev_types.txt").write_text("e.g\ni.e\nmr\nmrs\ndr\netc\nvs\n")
    for name in ("collocations.tab", "sent_starters.txt", "ortho_context.tab"):
        (english / name).write_text("")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory, nltk_data) -> Path:
    root = tmp_path_factory.mktemp("eval_data")
    for domain, docs in CLM_DOCS.items():
        _write_jsonl(root / "clm" / domain / "test.jsonl", [{"text": t} for t in docs])
    r = root / "reasoning"
    _write_jsonl(r / "math" / "gsm8k_test.jsonl",
                 [{"question": q, "answer": gold} for q, (_, gold, _, _) in GSM8K_CASES.items()])
    _write_jsonl(r / "math" / "gsm8k_train.jsonl", GSM8K_TRAIN)
    _write_jsonl(r / "coding" / "humaneval_test.jsonl", HUMANEVAL)
    _write_jsonl(r / "instruction" / "ifeval_test.jsonl", [row for row, _ in IFEVAL])
    return root


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = CHATML
    return tiny_model(vocab_size=len(tok), max_position_embeddings=512), tok


class CannedLM:
    """An lm-eval LM answering generation requests from a table keyed by text found in the prompt."""

    def __new__(cls, responses: dict[str, str]):
        from lm_eval.api.model import LM

        class _Canned(LM):
            def __init__(self):
                super().__init__()
                self.contexts: list[str] = []

            def generate_until(self, requests, disable_tqdm: bool = False):
                out = []
                for req in requests:
                    context = req.args[0]
                    self.contexts.append(context)
                    key = max(responses, key=lambda k: context.rfind(k))
                    assert context.rfind(key) >= 0, f"no canned response for {context!r}"
                    out.append(responses[key])
                return out

            def loglikelihood(self, requests, disable_tqdm: bool = False):
                raise NotImplementedError

            loglikelihood_rolling = loglikelihood

        return _Canned()


def _sequence_logprob(model, ids: list[int], n_target: int) -> float:
    """Sum of log p(ids[i] | ids[:i]) over the last ``n_target`` positions, one plain forward pass."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids[:-1]])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    targets = torch.tensor(ids[1:])
    return logp[torch.arange(len(targets)), targets][-n_target:].sum().item()


def test_perplexity_matches_independent_forward_pass(data, model_and_tokenizer):
    model, tok = model_and_tokenizer
    result = evaluate(model, tok, clm_suite(data / "clm", domains=list(CLM_DOCS)), batch_size=2,
                      bootstrap_iters=200, log_samples=True)
    assert result.suite == "clm-test" and not result.apply_chat_template and result.wall_s > 0
    for domain, docs in CLM_DOCS.items():
        ll, n_bytes, n_words, per_doc = 0.0, 0, 0, []
        for text in docs:
            ids = tok.encode(text)
            per_doc.append(_sequence_logprob(model, [tok.bos_token_id, *ids], len(ids)))
            ll += per_doc[-1]
            n_bytes += len(text.encode("utf-8"))
            n_words += len(re.split(r"\s+", text))
        score = result.domains[domain]
        # per-document outcomes for paired statistics: log-likelihood and bytes of each document, in file order
        items = score.items[f"dume_ppl_{domain}_test"]
        assert items["aggregate"] == "perplexity" and items["doc_id"] == list(range(len(docs)))
        assert items["num"] == pytest.approx(per_doc, rel=1e-4)
        assert items["den"] == [len(t.encode("utf-8")) for t in docs]
        assert items_score(items) == pytest.approx(score.score, rel=1e-12)
        assert score.metric == "byte_perplexity" and score.higher_is_better is False and score.n == len(docs)
        assert score.score == pytest.approx(math.exp(-ll / n_bytes), rel=1e-4)
        raw = result.raw["results"][f"dume_ppl_{domain}_test"]
        assert raw["word_perplexity,none"] == pytest.approx(math.exp(-ll / n_words), rel=1e-4)
        assert raw["bits_per_byte,none"] == pytest.approx(-ll / n_bytes / math.log(2), rel=1e-4)
        # document-level bootstrap of the weighted perplexity: positive and reproducible from the seed
        spec = clm_suite(data / "clm", domains=[domain]).domains[domain]
        assert score.stderr is not None and score.stderr > 0
        assert _domain_score(spec, result.raw, 200, 0).stderr == score.stderr
        assert _domain_score(spec, result.raw, 0, 0).stderr is None


def _arc_choice_scores(model, tok, question: str, choices: list[str]) -> tuple[int, int]:
    """(argmax loglikelihood, argmax loglikelihood / len(choice)) as lm-eval's multiple_choice defines them."""
    context = f"Question: {question}\nAnswer:"
    ctx_ids = tok.encode(context)
    lls = []
    for choice in choices:
        whole = tok.encode(context + " " + choice)
        n_cont = len(whole) - len(ctx_ids)
        lls.append(_sequence_logprob(model, whole, n_cont))
    norm = [ll / len(c) for ll, c in zip(lls, choices)]
    return max(range(len(lls)), key=lls.__getitem__), max(range(len(norm)), key=norm.__getitem__)


def test_arc_acc_norm_matches_independent_scoring(tmp_path, model_and_tokenizer):
    model, tok = model_and_tokenizer
    labels = ["A", "B", "C"]
    items = {"aa": [("Which animal barks?", ["dog", "cat", "fox"]), ("What is red?", ["the sea", "fire", "grass"])],
             "bb": [("Which is a number?", ["seven", "blue", "fast"]), ("What do fish do?", ["swim", "fly", "sing"])]}
    expected_acc = {}
    for lang, rows in items.items():
        out, hits = [], []
        for i, (question, choices) in enumerate(rows):
            best, best_norm = _arc_choice_scores(model, tok, question, choices)
            # language aa: item 0 gold = the normalised argmax, item 1 gold = another choice -> acc_norm 0.5
            gold = best_norm if (lang == "bb" or i == 0) else (best_norm + 1) % 3
            hits.append(float(best == gold))
            out.append({"id": f"{lang}{i}", "question": question, "answerKey": labels[gold],
                        "choices": {"text": choices, "label": labels}})
        _write_jsonl(tmp_path / "multilingual" / f"arc_{lang}_test.jsonl", out)
        expected_acc[lang] = sum(hits) / len(hits)
    suite = reasoning_suite(tmp_path, domains=["multilingual"], chat=False)
    assert [t["task"] for t in suite.tasks()] == ["dume_arc_aa", "dume_arc_bb"]  # languages discovered
    result = evaluate(model, tok, suite, batch_size=3)
    score = result.domains["multilingual"]
    assert score.per_task == {"dume_arc_aa": 0.5, "dume_arc_bb": 1.0}
    assert score.score == 0.75 and score.n == 4
    assert score.stderr == pytest.approx(math.sqrt(0.5 ** 2 + 0.0) / 2)  # binomial se per language, averaged
    for lang, acc in expected_acc.items():
        assert result.raw["results"][f"dume_arc_{lang}"]["acc,none"] == acc
    assert "samples" not in result.raw


def test_gsm8k_exact_match_on_canned_responses(data, nltk_data):
    lm = CannedLM({q: resp for q, (resp, _, _, _) in GSM8K_CASES.items()})
    suite = reasoning_suite(data / "reasoning", domains=["math"], num_fewshot=2, chat=False)
    result = run_suite(lm, suite)
    strict = [c[2] for c in GSM8K_CASES.values()]
    flexible = [c[3] for c in GSM8K_CASES.values()]
    score = result.domains["math"]
    assert (score.metric, score.n) == ("exact_match", 4)
    assert score.score == sum(flexible) / 4 == 0.75
    items = score.items["dume_math_gsm8k"]
    assert (items["aggregate"], items["num"], items["den"]) == ("mean", [float(f) for f in flexible], [1.0] * 4)
    assert score.stderr == pytest.approx(0.25)  # std([1,1,0,1], ddof=1) / sqrt(4)
    assert result.raw["results"]["dume_math_gsm8k"]["exact_match,strict-match"] == sum(strict) / 4
    # the harness prompt: 2 few-shot examples from the train file, then the question
    for context in lm.contexts:
        assert context.count("Question:") == 3 and context.startswith("Question: ") and context.endswith("\nAnswer:")
        assert all(row["question"] in context for row in GSM8K_TRAIN)


def test_humaneval_pass_at_1_through_the_harness(data):
    lm = CannedLM({row["prompt"]: HUMANEVAL_COMPLETIONS[row["task_id"]] for row in HUMANEVAL})
    suite = reasoning_suite(data / "reasoning", domains=["coding"], chat=False)
    task = suite.tasks()[0]
    assert task["generation_kwargs"]["until"] == ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
    assert task["generation_kwargs"]["do_sample"] is False
    result = run_suite(lm, suite, log_samples=True)
    assert result.domains["coding"].score == 0.5 and result.domains["coding"].n == 2
    assert sorted(lm.contexts) == sorted(row["prompt"] for row in HUMANEVAL)  # the raw prompt, zero-shot
    per_item = {s["doc"]["task_id"]: s["pass@1"] for s in result.raw["samples"]["dume_coding_humaneval"]}
    assert per_item == {"t/0": 1.0, "t/1": 0.0}
    assert result.domains["coding"].items["dume_coding_humaneval"]["num"] == [1.0, 0.0]
    exported = json.loads(json.dumps(result.to_dict()))  # JSON-safe despite the scorer object in the configs
    assert exported["domains"]["coding"]["score"] == 0.5 and "HumanEvalScorer" in json.dumps(exported["raw"]["configs"])


def test_humaneval_scorer_builds_programs():
    doc = HUMANEVAL[0]
    plain, instruct = HumanEvalScorer(), HumanEvalScorer(instruct=True)
    fenced = "    return a + b\n```\nThis adds the numbers.\n"
    assert plain.program(doc, "    return a + b\n").endswith("check(add)\n")
    assert instruct(doc, [fenced]) == {"pass@1": 1.0}  # the explanation after the fence is cut
    assert plain(doc, [fenced]) == {"pass@1": 0.0}  # plain prompts keep it, as lm-eval does: a syntax error
    assert plain(doc, [doc["canonical_solution"]]) == {"pass@1": 1.0}


def test_ifeval_scores_canned_responses(data, nltk_data):
    lm = CannedLM({row["prompt"]: response for row, response in IFEVAL})
    suite = reasoning_suite(data / "reasoning", domains=["instruction"], chat=False, nltk_data=nltk_data)
    result = run_suite(lm, suite, bootstrap_iters=100)
    score = result.domains["instruction"]
    assert (score.metric, score.n) == ("inst_level_strict_acc", 3)
    assert score.score == pytest.approx(3 / 5)
    items = score.items["dume_ifeval"]  # instructions followed / given, per prompt (the prompts are the clusters)
    assert sum(items["num"]) == 3 and sum(items["den"]) == 5 and len(items["den"]) == 3
    assert result.raw["results"]["dume_ifeval"]["prompt_level_strict_acc,none"] == pytest.approx(2 / 3)
    assert score.stderr is not None and 0 < score.stderr < 0.5  # prompt-level bootstrap


def test_chat_template_and_reference_protocol(data, model_and_tokenizer):
    model, tok = model_and_tokenizer
    chat = evaluate(model, tok, reasoning_suite(data / "reasoning", domains=["math"], num_fewshot=1, max_gen_toks=4),
                    limit=1, log_samples=True)
    context = chat.raw["samples"]["dume_math_gsm8k"][0]["arguments"][0][0]
    assert chat.apply_chat_template and context.count("<|im_start|>user") == 2  # one few-shot turn + the question
    assert context.endswith("<|im_start|>assistant\n")

    suite = reasoning_suite(data / "reasoning", domains=["math"], chat=False, protocol="reference")
    task = suite.tasks()[0]
    assert suite.protocol == "reference" and task["num_fewshot"] == 0 and task["doc_to_text"] == "{{question}}"
    assert task["generation_kwargs"] == REFERENCE_GENERATION

    short = reasoning_suite(data / "reasoning", domains=["math"], chat=False, protocol="reference", max_gen_toks=24)
    assert short.tasks()[0]["generation_kwargs"] == {**REFERENCE_GENERATION, "max_gen_toks": 24}

    def responses(seed):
        res = evaluate(model, tok, short, limit=2, seed=seed, log_samples=True, batch_size=2)
        samples = [s for s in res.raw["samples"]["dume_math_gsm8k"] if s["filter"] == "strict-match"]
        assert [s["arguments"][0][0] for s in samples] == [s["doc"]["question"] for s in samples]  # raw question
        return [s["resps"][0][0] for s in samples]

    first = responses(0)
    assert responses(0) == first  # sampling is seeded
    assert responses(1) != first


def test_paper_suite_configs_without_loading_data(nltk_data):
    assert len(OKAPI_ARC_LANGUAGES) == 31 and {"de", "fr", "zh"} <= set(OKAPI_ARC_LANGUAGES)
    suite = paper_reasoning_suite(arc_languages=("de", "fr"), nltk_data=nltk_data)
    tasks = {t["task"]: t for t in suite.tasks()}
    assert list(tasks) == ["gsm8k", "arc_de", "arc_fr", "humaneval_instruct", "ifeval"]
    assert (tasks["gsm8k"]["dataset_path"], tasks["gsm8k"]["num_fewshot"]) == ("openai/gsm8k", 5)
    assert (tasks["arc_de"]["dataset_path"], tasks["arc_de"]["dataset_name"]) == ("alexandrainst/m_arc", "de")
    assert callable(tasks["arc_fr"]["process_docs"])
    assert tasks["humaneval_instruct"]["dataset_path"] == "openai/openai_humaneval"
    assert isinstance(tasks["humaneval_instruct"]["process_results"], HumanEvalScorer)
    assert tasks["humaneval_instruct"]["process_results"].instruct
    assert tasks["ifeval"]["dataset_path"] == "google/IFEval"
    assert {d: (s.metric, s.filter) for d, s in suite.domains.items()} == REASONING_HEADLINES
    reference = suite.with_protocol("reference")
    ref_tasks = {t["task"]: t for t in reference.tasks()}
    assert ref_tasks["arc_de"] == tasks["arc_de"]  # log-likelihood tasks are unchanged
    assert ref_tasks["humaneval_instruct"]["doc_to_text"] == "{{prompt}}"
    assert "gen_prefix" not in ref_tasks["humaneval_instruct"]


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="gsm8k_test.jsonl"):
        reasoning_suite(tmp_path, domains=["math"])
    with pytest.raises(FileNotFoundError, match="arc_<lang>_test.jsonl"):
        reasoning_suite(tmp_path, domains=["multilingual"])


def test_evaluation_keys_follow_file_contents_not_paths(tmp_path):
    from dume_exp.utils.cache import recipe_key
    from dume_exp.experiment.scoring import content_keyed

    for folder, text in (("a", "x\n"), ("b", "x\n"), ("c", "y\n")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "test.jsonl").write_text(text)

    def key(folder: str) -> str:
        task = {"task": "t", "dataset_kwargs": {"data_files": {"test": str(tmp_path / folder / "test.jsonl")}},
                "metric_list": [{"metric": "acc"}], "doc_to_text": "{{question}}"}
        return recipe_key({"tasks": content_keyed([task])})

    assert key("a") == key("b")  # same contents in a rebuilt folder: the cached scores still apply
    assert key("a") != key("c")  # changed contents: a new key
    assert content_keyed({"path": "not/a/file", "n": 3}) == {"path": "not/a/file", "n": 3}


def test_instruction_level_stderr_is_the_clustered_ratio_estimator():
    from dume_exp.evaluation.harness import _stderr

    def flat_mean(items):  # how lm-eval aggregates IFEval's inst_level_* metrics
        flat = [x for sub in items for x in sub]
        return sum(flat) / len(flat)

    values = [[True, False], [True], [False, False, True], [True, True]]
    y, m = np.array([1.0, 1.0, 1.0, 2.0]), np.array([2.0, 1.0, 3.0, 2.0])
    p = y.sum() / m.sum()
    want = math.sqrt(4 / 3 * ((y - p * m) ** 2).sum()) / m.sum()
    assert _stderr(values, flat_mean, 0, np.random.default_rng(0)) == pytest.approx(want, rel=1e-12)
    closed = _stderr(values * 50, flat_mean, 0, np.random.default_rng(0))
    boot = _stderr(values * 50, lambda v: flat_mean(v) + 1e-9, 2000, np.random.default_rng(0))  # not the ratio: bootstrap
    assert boot == pytest.approx(closed, rel=0.1)  # the closed form agrees with a prompt-level bootstrap
