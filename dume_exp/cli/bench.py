"""Micro-benchmarks that print numbers and ratios: ``python -m dume_exp.bench moe|router-step|add-expert|load|sandbox|
statistics|eval-precision|router-training|expert-step|bootstrap [--help]``."""
from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ..method.dynamic import add_expert
from ..method.moe import dispatch_mode, force_expert, moe_blocks
from ..method.ridge import fit_routers
from ..method.router_statistics import RouterStatistics, collect_statistics
from ..method.upcycle import upcycle
from ..strategies.router_training import bf16_training_copy, trainable_router_parameters
from ..utils.hardware import native_bf16
from ..zoo.train import ADAM_BETAS, select_trainable


def _interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each function; rounds alternate between them so load drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(repeats + 1):  # round 0 is warm-up
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _experts(args: argparse.Namespace) -> list[torch.nn.Module]:
    """A random Llama and D-1 copies with perturbed MLPs (fp32)."""
    torch.manual_seed(args.seed)
    config = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
        max_position_embeddings=args.seq_len, tie_word_embeddings=True,
    )
    base = LlamaForCausalLM(config).eval()
    experts = [base]
    for d in range(1, args.experts):
        e = LlamaForCausalLM(config).eval()
        e.load_state_dict(base.state_dict())
        with torch.no_grad():
            for layer in e.model.layers:
                for p in layer.mlp.parameters():
                    p.add_(0.02 * torch.randn_like(p))
        experts.append(e)
    return experts


def _models(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    """The first expert, the MoE upcycled from all D, and a batch of token ids (in ``args.dtype``)."""
    experts = _experts(args)
    base = experts[0]
    moe = upcycle(experts, top_k=args.top_k).eval()
    dtype = getattr(torch, args.dtype)
    return base.to(dtype), moe.to(dtype), torch.randint(0, args.vocab, (args.batch, args.seq_len))


def _header(args: argparse.Namespace) -> str:
    return (f"model: {args.layers} layers, hidden {args.hidden}, intermediate {args.intermediate}, "
            f"D={args.experts}, top-{args.top_k}, batch {args.batch}x{args.seq_len}, {args.dtype}, "
            f"{torch.get_num_threads()} threads, median of {args.repeats}")


def bench_moe(args: argparse.Namespace) -> None:
    """Forward throughput of one dense expert vs the D-expert MoE with sparse and dense dispatch."""
    base, moe, ids = _models(args)
    tokens = ids.numel()

    def run(model: torch.nn.Module, dispatch: str = "sparse") -> Callable[[], object]:
        def call() -> object:
            with torch.inference_mode(), contextlib.ExitStack() as stack:
                if moe_blocks(model):
                    stack.enter_context(dispatch_mode(model, dispatch))
                return model.model(input_ids=ids, use_cache=False)  # the decoder: lm_head is shared by all variants
        return call

    print(_header(args))
    t = _interleaved_medians(
        {"dense expert": run(base), "MoE sparse dispatch": run(moe), "MoE dense dispatch": run(moe, "dense")},
        args.repeats,
    )
    dense_t, sparse_t, ref_t = t["dense expert"], t["MoE sparse dispatch"], t["MoE dense dispatch"]
    share = torch.stack([b.routing_counts.double() / b.routing_counts.sum() for b in moe_blocks(moe)]).mean(0)
    for name, secs in t.items():
        print(f"{name:<22} {secs * 1000:9.1f} ms   {tokens / secs:10.0f} tokens/s")
    print(f"sparse / dense expert: {sparse_t / dense_t:.3f}x   (goal <= 1.05x)")
    print(f"dense dispatch / dense expert: {ref_t / dense_t:.3f}x   (sparse dispatch is {ref_t / sparse_t:.2f}x faster)")
    print("routing share per expert (mean over layers): " + ", ".join(f"{s:.2f}" for s in share.tolist()))


def bench_router_step(args: argparse.Namespace) -> None:
    """One router-training step (forward + backward to the routers) vs a full fine-tuning step of one dense expert."""
    base, moe, ids = _models(args)
    for p in moe.parameters():
        p.requires_grad_(False)
    for block in moe_blocks(moe):
        block.router.requires_grad_(True)
    base.train(), moe.train()

    def step(model: torch.nn.Module, dispatch: str = "sparse") -> Callable[[], object]:
        def call() -> object:
            model.zero_grad(set_to_none=True)
            with contextlib.ExitStack() as stack:
                if moe_blocks(model):
                    stack.enter_context(dispatch_mode(model, dispatch))
                model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        return call

    print(_header(args))
    t = _interleaved_medians({"dense expert, all parameters": step(base), "MoE routers, sparse dispatch": step(moe),
                              "MoE routers, dense dispatch": step(moe, "dense")}, args.repeats)
    for name, secs in t.items():
        print(f"{name:<30} {secs * 1000:9.1f} ms   {ids.numel() / secs:10.0f} tokens/s")
    dense_t = t["dense expert, all parameters"]
    print(f"router step sparse / dense expert step: {t['MoE routers, sparse dispatch'] / dense_t:.3f}x")
    print(f"router step dense dispatch / dense expert step: {t['MoE routers, dense dispatch'] / dense_t:.3f}x")


def bench_add_expert(args: argparse.Namespace) -> None:
    """Adding the D-th expert to a (D-1)-expert DUME model (fast and exact) vs building the D-expert model anew."""
    experts = _experts(args)
    batches = [[{"input_ids": torch.randint(0, args.vocab, (args.batch, args.seq_len))}] for _ in experts]
    names = [f"e{d}" for d in range(len(experts))]

    def build(members: list[int]) -> tuple[torch.nn.Module, RouterStatistics]:
        moe = upcycle([experts[d] for d in members]).eval()
        stats = collect_statistics(moe, [batches[d] for d in members], args.seq_len, [names[d] for d in members],
                                   progress=False)
        fit_routers(moe, stats, lam=1e-2)
        return moe, stats

    times: dict[str, list[float]] = {"rebuild all D experts": [], "add one, fast": [], "add one, exact": []}
    for round_ in range(args.repeats + 1):  # round 0 is warm-up; setup (the D-1 model) is not timed
        for mode in ("fast", "exact"):
            moe, stats = build(list(range(len(experts) - 1)))
            start = time.perf_counter()
            add_expert(moe, stats, experts[-1], batches[-1], names[-1], mode=mode, existing_batches=batches[:-1],
                       max_tokens_per_sequence=args.seq_len, progress=False)
            if round_:
                times[f"add one, {mode}"].append(time.perf_counter() - start)
        start = time.perf_counter()
        build(list(range(len(experts))))
        if round_:
            times["rebuild all D experts"].append(time.perf_counter() - start)
    print(_header(args) + f"; calibration: {args.batch}x{args.seq_len} tokens per expert")
    t = {name: statistics.median(v) for name, v in times.items()}
    for name, secs in t.items():
        print(f"{name:<24} {secs * 1000:9.1f} ms")
    print(f"fast add / rebuild: {t['add one, fast'] / t['rebuild all D experts']:.3f}x   "
          f"(one statistics pass of {len(experts)}: ideal {1 / len(experts):.3f}x)")


_LOAD_PROBE = """
import re, sys, torch
from dume_exp import load_upcycled
def peak():  # this process's resident high-water mark in bytes (ru_maxrss would include the parent's, kept over exec)
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
before = peak()
model = load_upcycled(sys.argv[1], dtype=getattr(torch, sys.argv[2]))
with torch.no_grad():  # touch every weight: memory-mapped tensors count once they are resident
    sum(float(p.sum()) for p in model.parameters())
print(peak() - before)
"""


def bench_load(args: argparse.Namespace) -> None:
    """Peak memory of loading a saved DUME folder (in a fresh process, every weight touched) relative to the size
    of its weights."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    _, moe, _ = _models(args)
    with tempfile.TemporaryDirectory() as folder:
        moe.save_pretrained(folder)
        del moe
        weights = sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))
        out = subprocess.run([sys.executable, "-c", _LOAD_PROBE, folder, args.dtype], check=True,
                             capture_output=True, text=True).stdout
    peak = int(out.strip().splitlines()[-1])
    print(_header(args).rsplit(",", 2)[0])
    print(f"weights on disk {weights / 2**20:.0f} MiB; load_upcycled peak RSS increase {peak / 2**20:.0f} MiB; "
          f"ratio {peak / weights:.2f}x (goal ≤ 1.2x)")


_SANDBOX_PROGRAM = ("def add(a, b):\n    return a + b\n\n\ndef check(candidate):\n"
                    "    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n\n\ncheck(add)\n")


def bench_sandbox(args: argparse.Namespace) -> None:
    """Programs per second through the code sandbox (a small passing HumanEval-style program; ``--repeats``
    rounds of 20), isolated by bubblewrap and unisolated (resource limits and the Python guard only)."""
    from ..evaluation.tasks.sandbox import SandboxLimits, isolation_problem, run_python

    modes = {"unisolated": SandboxLimits(bwrap="/nonexistent/bwrap", unsafe_without_isolation=True)}
    problem = isolation_problem()
    if problem is None:
        modes["isolated"] = SandboxLimits()
    else:
        print(f"isolated: unavailable ({problem})")

    def twenty(limits: SandboxLimits) -> Callable[[], object]:
        def call() -> None:
            for _ in range(20):
                res = run_python(_SANDBOX_PROGRAM, limits)
                if not res.passed:
                    raise RuntimeError(f"the benchmark program failed in the sandbox: {res.stderr[-500:]}")
        return call
    medians = _interleaved_medians({name: twenty(limits) for name, limits in modes.items()}, args.repeats)
    for name, seconds in medians.items():
        print(f"{name}: {20 / seconds:.1f} programs/s ({seconds / 20 * 1000:.1f} ms each)")
    if len(medians) == 2:
        print(f"isolation cost: {medians['isolated'] / medians['unisolated']:.2f}x the unisolated time per program")


def bench_statistics(args: argparse.Namespace) -> None:
    """Router-statistics collection against a plain forward of the same tokens (the model routed as collection
    routes it: every token to one expert)."""
    _, moe, ids = _models(args)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def plain() -> object:
        with torch.inference_mode(), force_expert(moe, 0):
            return moe.model(input_ids=ids, use_cache=False)

    def collect() -> object:
        return collect_statistics(moe, [[batch]], max_tokens_per_sequence=args.seq_len, experts=[0], progress=False)

    print(_header(args))
    t = _interleaved_medians({"plain forward": plain, "statistics collection": collect}, args.repeats)
    for name, secs in t.items():
        print(f"{name:<22} {secs * 1000:9.1f} ms   {ids.numel() / secs:10.0f} tokens/s")
    print(f"statistics / plain forward: {t['statistics collection'] / t['plain forward']:.3f}x   (goal <= 1.10x)")


def bench_eval_precision(args: argparse.Namespace) -> None:
    """One dense model's scoring forward (decoder and head, no grad) in float32 against bfloat16 on this machine."""
    base = _experts(argparse.Namespace(**{**vars(args), "experts": 1}))[0]
    ids = torch.randint(0, args.vocab, (args.batch, args.seq_len))
    models = {"float32": base, "bfloat16": copy.deepcopy(base).to(torch.bfloat16)}

    def run(model: torch.nn.Module) -> Callable[[], object]:
        def call() -> object:
            with torch.inference_mode():
                return model(input_ids=ids, use_cache=False).logits
        return call

    print(_header(args).replace(args.dtype, "float32 vs bfloat16"))
    print(f"CPU capability: {torch.backends.cpu.get_cpu_capability()}")
    t = _interleaved_medians({name: run(m) for name, m in models.items()}, args.repeats)
    for name, secs in t.items():
        print(f"{name:<10} {secs * 1000:9.1f} ms   {ids.numel() / secs:10.0f} tokens/s")
    faster = min(t, key=t.get)
    print(f"bfloat16 / float32 time: {t['bfloat16'] / t['float32']:.3f}x   ({faster} is faster here)")


def bench_router_training(args: argparse.Namespace) -> None:
    """Router-training steps per second (forward and backward to the routers) of the upcycled model under bf16
    autocast, as a bf16 copy with fp32 routers (router training's bf16 path) and in fp32; and how far each one's
    router gradient is from the fp32 one."""
    moe = upcycle(_experts(args), top_k=args.top_k)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq_len))
    params = trainable_router_parameters(moe)
    copy16 = bf16_training_copy(moe, params)
    moe.train(), copy16.train()

    def step(model: torch.nn.Module, autocast: bool = False) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            for p in params:
                p.grad = None
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            loss.backward()
            return torch.cat([p.grad.flatten() for p in params])
        return call

    fns = {"bf16 autocast": step(moe, autocast=True), "bf16 copy, fp32 routers": step(copy16), "fp32": step(moe)}
    print(_header(args).replace(args.dtype, "precision as named"))
    print(f"CPU capability: {torch.backends.cpu.get_cpu_capability()}; native bf16: {native_bf16('cpu')}")
    grads = {name: fn() for name, fn in fns.items()}
    t = _interleaved_medians(fns, args.repeats)
    ref = grads["fp32"]
    for name, secs in t.items():
        g = grads[name]
        print(f"{name:<24} {1 / secs:7.3f} steps/s  {ids.numel() / secs:8.0f} tokens/s   router gradient vs fp32: "
              f"relative error {float((g - ref).norm() / ref.norm()):.4f}, cosine "
              f"{float(torch.nn.functional.cosine_similarity(g, ref, dim=0)):.5f}")
    print(f"bf16 copy / autocast speed: {t['bf16 autocast'] / t['bf16 copy, fp32 routers']:.2f}x   "
          f"autocast / fp32: {t['fp32'] / t['bf16 autocast']:.2f}x   bf16 copy / fp32: "
          f"{t['fp32'] / t['bf16 copy, fp32 routers']:.2f}x")


def bench_expert_step(args: argparse.Namespace) -> None:
    """One zoo fine-tuning step (forward, backward, clipping, AdamW) of a dense expert: every parameter against the
    MLPs only, in fp32, and under bf16 autocast where this machine has native bf16 (emulated bf16 is skipped)."""
    model = _experts(argparse.Namespace(**{**vars(args), "experts": 1}))[0].train()
    ids = torch.randint(0, args.vocab, (args.batch, args.seq_len))

    def step(trainable: str, bf16: bool) -> Callable[[], object]:
        params = [p for _, p in select_trainable(model, trainable)]
        optimizer = torch.optim.AdamW(params, lr=1e-5, betas=ADAM_BETAS)

        def call() -> object:
            select_trainable(model, trainable)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return call

    fns = {"fp32, all parameters": step("all", False), "fp32, MLPs only": step("mlp", False)}
    if native_bf16("cpu"):
        fns["bf16 autocast, all parameters"] = step("all", True)
    print(_header(args).replace(args.dtype, "precision as named"))
    print(f"CPU capability: {torch.backends.cpu.get_cpu_capability()}; native bf16: {native_bf16('cpu')}"
          + ("" if native_bf16("cpu") else " (emulated bf16 not timed: eval-precision shows its cost)"))
    t = _interleaved_medians(fns, args.repeats)
    for name, secs in t.items():
        print(f"{name:<30} {secs:8.2f} s/step   {ids.numel() / secs:8.0f} tokens/s")
    ref = t["fp32, all parameters"]
    print("; ".join(f"{name} / fp32 all: {secs / ref:.3f}x" for name, secs in t.items() if name != "fp32, all parameters"))


def _synthetic_results(n_candidates: int, n_seeds: int, tasks: dict[str, list[int]], rng: np.random.Generator) -> dict:
    """A results dict of per-item 0/1 outcomes: ``tasks`` maps each domain to its tasks' item counts."""
    names = [f"expert:{d}" for d in tasks] + [f"candidate{i}" for i in range(n_candidates - len(tasks))]

    def items(n: int) -> dict:
        return {"aggregate": "mean", "doc_id": list(range(n)), "num": rng.integers(0, 2, n).astype(float).tolist(),
                "den": [1.0] * n}

    seeds = [{"seed": s, "rows": [{"name": name, "items": {d: {f"{d}{t}": items(n) for t, n in enumerate(ns)}
                                                           for d, ns in tasks.items()}} for name in names]}
             for s in range(n_seeds)]
    return {"domains": list(tasks), "metrics": {d: {"higher_is_better": True} for d in tasks}, "seeds": seeds}


def bench_bootstrap(args: argparse.Namespace) -> None:
    """Paired bootstrap of a full reasoning-sized table: 10,000 resamples, every candidate's interval (goal < 10 s)."""
    from ..reporting.bootstrap import PairedBootstrap

    tasks = {"math": [60], "multilingual": [15] * 4, "coding": [40], "instruction": [20]}
    results = _synthetic_results(20, 3, tasks, np.random.default_rng(args.seed))
    start = time.perf_counter()
    boot = PairedBootstrap(results, n_resamples=10_000, seed=args.seed)
    intervals = [boot.retention(n) for n in boot.names] + [boot.difference(n, boot.names[-1]) for n in boot.names]
    wall = time.perf_counter() - start
    print(f"20 candidates x 3 seeds x {sum(map(sum, tasks.values()))} items, 10,000 resamples, {len(intervals)} "
          f"intervals: {wall:.2f} s ({wall / 10:.3f}x the 10 s goal)")


BENCHMARKS: dict[str, Callable[[argparse.Namespace], None]] = {
    "moe": bench_moe, "router-step": bench_router_step, "add-expert": bench_add_expert, "load": bench_load,
    "sandbox": bench_sandbox, "statistics": bench_statistics, "eval-precision": bench_eval_precision,
    "router-training": bench_router_training, "expert-step": bench_expert_step, "bootstrap": bench_bootstrap}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dume_exp.bench", description=__doc__)
    sub = parser.add_subparsers(dest="bench", required=True)
    for name, fn in BENCHMARKS.items():
        bench = sub.add_parser(name, help=fn.__doc__)
        for flag, default in [("--experts", 4), ("--top-k", 1), ("--hidden", 512), ("--intermediate", 2048),
                              ("--layers", 8), ("--heads", 8), ("--vocab", 1024), ("--batch", 8), ("--seq-len", 512),
                              ("--repeats", 5), ("--seed", 0)]:
            bench.add_argument(flag, type=int, default=default)
        bench.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args(argv)
    BENCHMARKS[args.bench](args)

