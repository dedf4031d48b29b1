"""The parity gate an inference engine passes before its scores of an exported DUME model are accepted.

Discrete routing amplifies small numeric differences between engines: a token whose two best router scores are
close can go to another expert under another kernel, and its log-probabilities then jump. The gate scores fixed
calibration sequences with the engine and with the transformers reference and refuses the engine when, at any
position, a log-probability of the reference's top tokens differs by more than ``tolerance``, or when the two
disagree on the most likely next token at more than ``max_disagreement`` of the positions.

An engine is anything with ``prompt_logprobs(sequences, top_k)``: per sequence, per position from the second token
on, a mapping from token id to log-probability of (at least) its own ``top_k`` tokens, as vLLM's
``prompt_logprobs`` gives (:class:`VllmEngine` adapts it). A reference top token missing from the engine's list
counts as an unbounded difference.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch


class PromptLogprobEngine(Protocol):
    def prompt_logprobs(self, sequences: Sequence[Sequence[int]], top_k: int) -> list[list[Mapping[int, float]]]:
        ...


@dataclass(frozen=True)
class ParityReport:
    sequences: int
    positions: int
    max_logprob_difference: float  # over every position and each of the reference's top_k tokens
    top1_disagreement: float  # share of positions whose most likely next token differs
    tolerance: float
    max_disagreement: float

    @property
    def passed(self) -> bool:
        return self.max_logprob_difference <= self.tolerance and self.top1_disagreement <= self.max_disagreement

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "REFUSED"
        return (f"parity {verdict}: {self.sequences} sequences, {self.positions} positions; max |Δ log p| "
                f"{self.max_logprob_difference:.2e} (tolerance {self.tolerance:.0e}); next-token disagreement "
                f"{self.top1_disagreement:.2%} (at most {self.max_disagreement:.2%})")


class ParityError(RuntimeError):
    """The engine does not reproduce the reference closely enough for its scores to be accepted."""


@torch.inference_mode()
def reference_logprobs(model: torch.nn.Module, sequence: Sequence[int]) -> torch.Tensor:
    """``[len - 1, vocab]`` float32 log-probabilities of each next token of ``sequence`` under ``model``."""
    ids = torch.tensor([list(sequence)], device=next(model.parameters()).device)
    logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float().cpu()
    return torch.log_softmax(logits, dim=-1)


def check_parity(reference: torch.nn.Module, engine: PromptLogprobEngine, sequences: Sequence[Sequence[int]],
                 top_k: int = 5, tolerance: float = 5e-2, max_disagreement: float = 0.01) -> ParityReport:
    """Compare ``engine`` with the transformers ``reference`` on ``sequences`` (token ids); raise
    :class:`ParityError` with the report when it fails."""
    served = engine.prompt_logprobs(sequences, top_k)
    if len(served) != len(sequences):
        raise ParityError(f"the engine returned {len(served)} results for {len(sequences)} sequences")
    worst, disagree, positions = 0.0, 0, 0
    for sequence, rows in zip(sequences, served):
        ref = reference_logprobs(reference, sequence)
        if len(rows) != ref.shape[0]:
            raise ParityError(f"the engine scored {len(rows)} positions of a {len(sequence)}-token sequence; "
                              f"expected {ref.shape[0]}")
        for expected, got in zip(ref, rows):
            if len(got) < top_k:
                raise ParityError(f"the engine returned {len(got)} log-probabilities at a position; ask it for at "
                                  f"least top_k={top_k}")
            top = expected.topk(top_k)
            # a reference top token outside the engine's own top list: the engines rank the tokens differently
            worst = max(worst, *(abs(got[t] - v) if t in got else float("inf")
                                 for t, v in zip(top.indices.tolist(), top.values.tolist())))
            disagree += max(got, key=got.get) != top.indices[0].item()
            positions += 1
    report = ParityReport(len(sequences), positions, worst, disagree / max(positions, 1), tolerance, max_disagreement)
    if not report.passed:
        raise ParityError(f"{report}. The engine's scores are not accepted: its numerics or routing differ from the "
                          "transformers model; serve the native or stock transformers model instead.")
    return report


class VllmEngine:
    """vLLM's offline ``LLM`` on an exported folder as a :class:`PromptLogprobEngine` (needs vLLM and a GPU)."""

    def __init__(self, folder: str, **llm_kwargs: object) -> None:
        from vllm import LLM

        self.llm = LLM(model=folder, **llm_kwargs)

    @classmethod
    def from_llm(cls, llm: object) -> "VllmEngine":
        """The gate's engine on an already started ``vllm.LLM`` (e.g. the one lm-eval's vLLM model holds)."""
        engine = cls.__new__(cls)
        engine.llm = llm
        return engine

    def prompt_logprobs(self, sequences: Sequence[Sequence[int]], top_k: int) -> list[list[Mapping[int, float]]]:
        from vllm import SamplingParams, TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=top_k)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(s)) for s in sequences], params)
        return [[{t: lp.logprob for t, lp in row.items()} for row in out.prompt_logprobs[1:]] for out in outputs]
