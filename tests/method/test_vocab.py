"""Vocabulary alignment: experts that differ only in their number of embedding rows merge on the shared rows."""
import copy

import pytest
import torch

from dume_exp import collect_statistics, fit_routers, shared_vocab_rows, upcycle, weight_average
from dume_exp.method.dynamic import add_expert

from tests.helpers import make_experts, random_batches, tiny_model


def _padded(model, extra: int = 64):
    """``model`` with ``extra`` vocabulary rows appended (as fine-tunes that add padding rows have); its first
    rows are untouched, so ``model`` itself is the hand-truncated version."""
    out = copy.deepcopy(model)
    out.resize_token_embeddings(out.config.vocab_size + extra, mean_resizing=False)
    return out


def _assert_identical(got, want):
    assert got.config.vocab_size == want.config.vocab_size
    a, b = got.state_dict(), want.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    ids = random_batches(1, 2, 9, seed=3)[0]["input_ids"]
    with torch.no_grad():
        assert torch.equal(got(input_ids=ids).logits, want(input_ids=ids).logits)


@pytest.mark.parametrize("tied", [True, False])
def test_aligned_merge_equals_merging_hand_truncated_experts(tied):
    experts = make_experts(3, shared_backbone=False, tie_word_embeddings=tied)
    padded = [experts[0], _padded(experts[1]), experts[2]]
    assert padded[1].get_input_embeddings().weight.shape[0] == 364
    with pytest.warns(UserWarning, match="expert 1 has 364 vocabulary rows; merging on the 300 rows .* drops its last 64"):
        moe = upcycle(padded, top_k=2)
    _assert_identical(moe, upcycle(experts, top_k=2))
    assert (moe.lm_head.weight is moe.model.embed_tokens.weight) == tied
    assert moe.lm_head.out_features == moe.model.embed_tokens.num_embeddings == 300
    with pytest.warns(UserWarning, match="expert 1 has 364"):
        avg = weight_average(padded)
    _assert_identical(avg, weight_average(experts))


def test_strict_refuses_and_align_refuses_anything_but_the_vocabulary(tiny_tokenizer):
    a = tiny_model()
    with pytest.raises(ValueError, match=r"config.vocab_size differs \(300 vs 364\).*vocab='align'"):
        upcycle([a, _padded(a)], vocab="strict")
    with pytest.raises(ValueError, match="config.hidden_size differs"):
        upcycle([a, tiny_model(hidden_size=48)])
    with pytest.raises(ValueError, match="vocab must be one of"):
        upcycle([a, a], vocab="loose")
    # Dropping rows that are tokens of the tokenizer in use would lose their embeddings: refused.
    n = len(tiny_tokenizer)
    small = copy.deepcopy(a)
    small.resize_token_embeddings(n - 10)
    with pytest.raises(ValueError, match=f"tokenizer has {n} tokens but expert 0 has only {n - 10} embedding rows"):
        upcycle([small, a], tokenizer=tiny_tokenizer)
    assert shared_vocab_rows([a, _padded(a)], tokenizer=tiny_tokenizer) == 300 >= n


def test_add_expert_aligns_the_vocabulary():
    experts = make_experts(3, shared_backbone=False)
    data = [random_batches(2, 2, 12, seed=40 + d) for d in range(3)]

    def grown(base_experts, new):
        moe = upcycle(base_experts)
        stats = collect_statistics(moe, data[:2], 16, expert_names=["a", "b"], progress=False)
        fit_routers(moe, stats)
        stats = add_expert(moe, stats, new, data[2], "c", max_tokens_per_sequence=16, progress=False)
        return moe, stats

    want, want_stats = grown(experts[:2], experts[2])
    with pytest.warns(UserWarning, match="expert 1 has 364 vocabulary rows"):
        got, got_stats = grown(experts[:2], _padded(experts[2]))  # the new expert has more rows
    _assert_identical(got, want)
    assert torch.equal(got_stats.gram, want_stats.gram)
    with pytest.warns(UserWarning, match="expert 0 has 364 vocabulary rows"):
        got, got_stats = grown([_padded(e) for e in experts[:2]], experts[2])  # the model has more rows
    _assert_identical(got, want)
    assert torch.equal(got_stats.gram, want_stats.gram)
