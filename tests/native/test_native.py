"""The native DUME classes: a saved folder is a first-class transformers model (Auto classes, remote code,
shards, tokenizer, model card, Hub upload), and nothing else loads it as a dense model."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from dume_exp import collect_statistics, fit_routers, load_upcycled, set_routing, upcycle
from dume_exp.native import annotate_saved

from tests.helpers import make_experts, random_batches

IDS = random_batches(1, 2, 11, seed=9)[0]["input_ids"]


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _fitted(family="llama", n=3, **overrides):
    moe = upcycle(make_experts(n, family, shared_backbone=False, **overrides), top_k=2)
    stats = collect_statistics(moe, [random_batches(1, 2, 12, seed=s) for s in range(n)], 16,
                               expert_names=["math", "code", "chat"][:n], progress=False)
    fit_routers(moe, stats, lam=0.1)
    return moe


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_auto_classes_rebuild_the_exact_model(family, tmp_path):
    moe = _fitted(family)
    assert moe.config.model_type == f"dume_{family}"
    moe.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(back) is type(moe)
    assert all(int(layer.mlp.routing_counts.sum()) == 0 for layer in back.model.layers)  # not saved: start at 0
    assert torch.equal(_logits(back), _logits(moe))


def test_set_routing_is_what_is_saved(tmp_path):
    moe = _fitted()
    set_routing(moe, top_k=1, temperature=0.5)
    want = _logits(moe)
    moe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dume_moe"] == {
        "num_experts": 3, "top_k": 1, "temperature": 0.5}
    back = load_upcycled(tmp_path)
    assert [(b.mlp.top_k, b.mlp.temperature) for b in back.model.layers] == [(1, 0.5)] * 2
    assert torch.equal(_logits(back), want)
    moe.model.layers[1].mlp.top_k = 3  # per-layer settings are kept per layer
    moe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dume_moe"]["top_k"] == [1, 3]
    assert [b.mlp.top_k for b in load_upcycled(tmp_path).model.layers] == [1, 3]


def test_shards_tokenizer_card_and_atomic_overwrite(tmp_path, tiny_tokenizer):
    experts = make_experts(3, shared_backbone=False)
    folders = []
    for i, e in enumerate(experts):  # experts saved with a licensed model card, then loaded from their folders
        folder = tmp_path / f"expert{i}"
        e.save_pretrained(folder)
        (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# expert\n")
        folders.append(str(folder))
    moe = upcycle([LlamaForCausalLM.from_pretrained(f) for f in folders], top_k=2, temperature=0.7)
    fit_routers(moe, collect_statistics(moe, [random_batches(1, 2, 12, seed=s) for s in range(3)], 16,
                                        expert_names=["math", "code", "chat"], progress=False), lam=0.05)
    out = tmp_path / "dume"
    moe.save_pretrained(out, tokenizer=tiny_tokenizer, max_shard_size="50KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and sorted(p.name for p in out.glob("model-*.safetensors")) == shards
    for shard in shards:
        with safe_open(out / shard, "pt") as f:
            assert sum(f.get_tensor(k).numel() * 4 for k in f.keys()) <= 50_000
    assert torch.equal(_logits(load_upcycled(out)), _logits(moe))
    assert AutoTokenizer.from_pretrained(out)("the fox")["input_ids"] == tiny_tokenizer("the fox")["input_ids"]

    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == folders and card.data.license == "apache-2.0"
    assert card.data.tags == ["moe", "merge", "dume"] and card.data.library_name == "transformers"
    assert "λ = 0.05" in card.text and "top-k: 2; router temperature: 0.7" in card.text
    assert "| math | " + folders[0] + " |" in card.text
    assert "tokens per expert = 24, 24, 24" in card.text
    annotate_saved(out, retention={"math": 98.5, "avg": 97.0})
    card = ModelCard.load(out / "README.md")
    assert "| math | avg |" in card.text and "| 98.5 | 97.0 |" in card.text
    assert json.loads((out / "config.json").read_text())["dume_provenance"]["retention"]["avg"] == 97.0

    # A save into an existing folder replaces its shards (no stale ones) and a failed save leaves it as it was.
    moe.save_pretrained(out)
    assert not list(out.glob("model-*.safetensors")) and (out / "model.safetensors").exists()
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    class Broken:
        def save_pretrained(self, folder):
            raise OSError("disk full")

    set_routing(moe, top_k=1)
    with pytest.raises(OSError, match="disk full"):
        moe.save_pretrained(out, tokenizer=Broken())
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []
    with pytest.raises(ValueError, match="use model.push_to_hub"):
        moe.save_pretrained(out, push_to_hub=True)


def test_push_to_hub_uploads_weights_code_tokenizer_and_card(tmp_path, tiny_tokenizer):
    class LocalHub:  # stands in for huggingface_hub.HfApi: a repository is a local folder
        def __init__(self, root):
            self.root, self.calls = root, []

        def create_repo(self, repo_id, private=None, exist_ok=False):
            self.calls.append(("create_repo", repo_id, private, exist_ok))

        def upload_folder(self, repo_id, folder_path, commit_message):
            import shutil

            self.calls.append(("upload_folder", repo_id, commit_message))
            shutil.copytree(folder_path, self.root / repo_id)

    moe, hub = _fitted(), LocalHub(tmp_path)
    moe.push_to_hub("me/dume-3x", tokenizer=tiny_tokenizer, api=hub, private=True)
    assert hub.calls == [("create_repo", "me/dume-3x", True, True), ("upload_folder", "me/dume-3x", "Upload DUME model")]
    repo = tmp_path / "me" / "dume-3x"
    assert {"README.md", "config.json", "model.safetensors", "modeling_dume.py", "tokenizer.json"} <= set(os.listdir(repo))
    assert ModelCard.load(repo / "README.md").data.tags == ["moe", "merge", "dume"]
    assert torch.equal(_logits(load_upcycled(repo)), _logits(moe))


_REMOTE = """
import sys
sys.modules["dume_exp"] = None  # a process where dume_exp cannot be imported
import torch
from transformers import AutoModelForCausalLM
folder, ids, want = sys.argv[1], torch.load(sys.argv[2]), torch.load(sys.argv[3])
try:
    AutoModelForCausalLM.from_pretrained(folder)
    print("LOADED WITHOUT REMOTE CODE")
except ValueError as err:
    print("refused:", str(err).splitlines()[0])
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
with torch.no_grad():
    got = model(input_ids=ids).logits
print(type(model).__module__, type(model).__name__, "max_abs_diff", (got - want).abs().max().item())
model.save_pretrained(folder + "_again")
"""


@pytest.mark.slow
def test_remote_code_rebuilds_the_model_where_dume_exp_is_not_installed(tmp_path):
    moe = _fitted("qwen2")
    moe.save_pretrained(tmp_path / "m")
    torch.save(IDS, tmp_path / "ids.pt")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocess: some CPUs' kernels sum in another order with more threads
    try:
        torch.save(_logits(moe), tmp_path / "want.pt")
    finally:
        torch.set_num_threads(threads)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_REMOTE), str(tmp_path / "m"), str(tmp_path / "ids.pt"),
                           str(tmp_path / "want.pt")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "LOADED WITHOUT REMOTE CODE" not in proc.stdout and "refused:" in proc.stdout
    assert "trust_remote_code" in proc.stdout
    assert "DumeQwen2ForCausalLM max_abs_diff 0.0" in proc.stdout and "transformers_modules" in proc.stdout
    # Saved again by the remote-code copy: still a complete DUME folder, loadable here.
    assert torch.equal(_logits(load_upcycled(tmp_path / "m_again")), _logits(moe))
    assert (tmp_path / "m_again" / "modeling_dume.py").exists() and (tmp_path / "m_again" / "README.md").exists()


def test_folder_of_an_older_dume_exp_and_non_dume_folders(tmp_path, caplog):
    moe = _fitted()
    moe.save_pretrained(tmp_path / "old")
    cfg = json.loads((tmp_path / "old" / "config.json").read_text())
    for key in ("auto_map", "dume_provenance"):
        cfg.pop(key)
    cfg.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg))
    with caplog.at_level("WARNING"):
        back = load_upcycled(tmp_path / "old")
    assert "saved by an older dume_exp" in caplog.text
    assert type(back) is type(moe) and torch.equal(_logits(back), _logits(moe))
    dense = make_experts(1)[0]
    dense.save_pretrained(tmp_path / "dense")
    with pytest.raises(ValueError, match="is not a DUME model"):
        load_upcycled(tmp_path / "dense")


def test_lm_eval_hf_backend_on_the_saved_folder_scores_as_in_memory(tmp_path, tiny_tokenizer):
    """lm-eval's ``hf`` model given the folder (as `lm_eval --model hf --model_args pretrained=<folder>` does)
    scores exactly what the in-memory model scores."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    moe = _fitted()
    moe.save_pretrained(tmp_path / "m", tokenizer=tiny_tokenizer)
    docs = ["The quick brown fox jumps over the lazy dog.", "def f(x):\n    return x + 1"]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    task = {
        "task": "two_docs", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(tmp_path / "docs.jsonl")}},
        "test_split": "test", "output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{text}}",
        "metric_list": [{"metric": "word_perplexity", "aggregation": "weighted_perplexity", "higher_is_better": False}],
    }

    def score(lm):
        res = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=TaskManager(include_defaults=False),
                                      bootstrap_iters=0, num_fewshot=0)
        return res["results"]["two_docs"]["word_perplexity,none"]

    in_memory = score(HFLM(pretrained=moe, tokenizer=tiny_tokenizer, batch_size=2, max_length=64, backend="causal"))
    folder = score(HFLM(pretrained=str(tmp_path / "m"), trust_remote_code=True, device="cpu", dtype="float32",
                        batch_size=2, max_length=64))
    assert folder == in_memory and in_memory > 1


def test_the_card_says_how_the_routers_were_made():
    from dume_exp.native import annotate
    from dume_exp.native.model_card import render_model_card

    moe = upcycle(make_experts(2, shared_backbone=False))
    opening = {"random": "the routers are left at their random initialisation"}
    fitted = _fitted(n=2)
    cards = {"random": render_model_card(moe.config), "ridge": render_model_card(fitted.config)}
    annotate(moe, router={"method": "trained", "description": "trained by gradient descent for 5 steps from random init"})
    cards["trained"] = render_model_card(moe.config)
    assert opening["random"] in cards["random"] and "ridge" not in cards["random"]
    assert "each layer's router is a ridge regression solved in closed form" in cards["ridge"]
    assert "Built without training" in cards["ridge"] and "Built without training" not in cards["trained"]
    assert "the routers are trained by gradient descent for 5 steps from random init." in cards["trained"]
    assert "ridge" not in cards["trained"]
