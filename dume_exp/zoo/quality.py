"""Zoo quality: every model (base and experts) scored on every domain, as a table under ``results/zoo/``."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..cache import atomic_file, write_json_atomic
from ..evaluation import EvalResult, Suite, clm_suite, evaluate, reasoning_suite
from .build import Zoo


def zoo_suite(zoo: Zoo) -> Suite:
    domains = list(zoo.experts)
    if zoo.setting == "clm":
        return clm_suite(zoo.data_dir, domains)
    return reasoning_suite(zoo.data_dir, domains=domains, nltk_data=zoo.nltk_data)


def quality_matrix(zoo: Zoo, out_dir: Path, batch_size: int = 8, bf16: bool = True) -> Path:
    """Evaluate base + experts on every domain; write ``<setting>_matrix.{md,json}``; return the markdown path."""
    suite = zoo_suite(zoo)
    tokenizer = AutoTokenizer.from_pretrained(zoo.base)
    models = {"base": zoo.base, **{f"expert:{d}": p for d, p in zoo.experts.items()}}
    rows: dict[str, EvalResult] = {}
    for name, path in models.items():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if bf16 else torch.float32)
        rows[name] = evaluate(model, tokenizer, suite, batch_size=batch_size)
        print(f"{name}: {rows[name].scores()} ({rows[name].wall_s:.1f} s)")
    domains = list(suite.domains)
    spec = {d: suite.domains[d] for d in domains}
    lines = [f"# Zoo quality: {zoo.setting}", "",
             "| model | " + " | ".join(domains) + " | eval wall s |", "|---" * (len(domains) + 2) + "|"]
    for name, res in rows.items():
        cells = []
        for d in domains:
            s = res.domains[d]
            col = [r.domains[d].score for r in rows.values()]
            best = (max if spec[d].higher_is_better else min)(col)
            se = f" ± {s.stderr:.3f}" if s.stderr is not None else ""
            cell = f"{s.score:.3f}{se}"
            cells.append(f"**{cell}**" if s.score == best else cell)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {res.wall_s:.1f} |")
    lines += ["", "Metrics: " + ", ".join(f"{d}: {spec[d].metric} ({spec[d].filter}), "
                                         f"{'higher' if spec[d].higher_is_better else 'lower'} is better, "
                                         f"n={rows['base'].domains[d].n}" for d in domains) + ".",
              "Bold: best per column. ± is the standard error where the metric has one.",
              f"Experts: {json.dumps({d: e['train'] for d, e in zoo.manifest['experts'].items()}, default=str)[:4000]}"]
    out_dir = Path(out_dir)
    md = out_dir / f"{zoo.setting}_matrix.md"
    with atomic_file(md) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    write_json_atomic(out_dir / f"{zoo.setting}_matrix.json",
                      {"zoo": zoo.manifest, "results": {n: r.to_dict() | {"raw": None} for n, r in rows.items()}})
    return md
