"""The engine parity gate, with stand-in engines in place of vLLM: it accepts an engine that reproduces the reference
and refuses one whose routing or numerics differ."""
import copy

import pytest
import torch

from dume_exp import moe_blocks
from dume_exp.export import to_stock_moe
from dume_exp.export.parity import ParityError, check_parity, reference_logprobs
from tests.export.test_export import LLAMA3, dume_model
from tests.helpers import random_batches

SEQUENCES = [row.tolist() for row in random_batches(1, 4, 24, seed=11)[0]["input_ids"]]


class TransformersEngine:
    """A stand-in for vLLM: a transformers model's prompt log-probabilities, top ``top_k`` per position."""

    def __init__(self, model, noise: float = 0.0, keep: int | None = None):
        self.model, self.noise, self.keep = model, noise, keep

    def prompt_logprobs(self, sequences, top_k):
        gen = torch.Generator().manual_seed(0)
        out = []
        for seq in sequences:
            logprobs = reference_logprobs(self.model, seq)
            logprobs = logprobs + self.noise * torch.randn(logprobs.shape, generator=gen)
            top = logprobs.topk(self.keep or top_k + 2, dim=-1)
            out.append([dict(zip(i.tolist(), v.tolist())) for i, v in zip(top.indices, top.values)])
        return out


def test_an_engine_serving_the_exported_model_passes_the_gate():
    model = dume_model("llama", 2, **LLAMA3)
    report = check_parity(model, TransformersEngine(to_stock_moe(model)), SEQUENCES, tolerance=1e-5)
    assert report.passed and report.positions == 4 * 23 and report.top1_disagreement == 0.0
    assert report.max_logprob_difference <= 1e-5


def test_routing_that_differs_from_the_reference_is_refused():
    model = dume_model("llama", 1, **LLAMA3)
    rerouted = copy.deepcopy(model)
    with torch.no_grad():
        for block in moe_blocks(rerouted):
            block.router.weight.copy_(block.router.weight.flip(0))  # the same scores, sent to other experts
    with pytest.raises(ParityError, match="REFUSED.*not accepted"):
        check_parity(model, TransformersEngine(rerouted), SEQUENCES)


def test_the_tolerance_separates_small_from_large_numeric_differences():
    model = dume_model("llama", 1, **LLAMA3)
    assert check_parity(model, TransformersEngine(model, noise=1e-3), SEQUENCES, max_disagreement=0.05).passed
    with pytest.raises(ParityError, match=r"max \|Δ log p\|"):
        check_parity(model, TransformersEngine(model, noise=0.2), SEQUENCES, max_disagreement=1.0)


def test_an_engine_that_returns_too_few_tokens_is_refused_with_the_fix():
    model = dume_model("llama", 1, **LLAMA3)
    with pytest.raises(ParityError, match="returned 2 log-probabilities at a position; ask it for at least top_k=5"):
        check_parity(model, TransformersEngine(model, keep=2), SEQUENCES, top_k=5)
