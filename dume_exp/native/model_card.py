"""The model card (README.md) of a saved DUME model, rendered from its configuration.

Standalone (transformers and huggingface_hub only): saved next to every DUME model, so a model
loaded as remote code writes the same card when it is saved again.
"""
from __future__ import annotations

from typing import Any

from huggingface_hub import ModelCardData

TAGS = ["moe", "merge", "dume"]


def _layout_text(value: Any) -> str:
    if isinstance(value, list):
        return str(value[0]) if len(set(value)) == 1 else ", ".join(map(str, value)) + " (per layer)"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _settings(layout: dict[str, Any], prov: dict[str, Any]) -> list[str]:
    lines = [f"- experts per layer: {layout['num_experts']}; top-k: {_layout_text(layout['top_k'])}; "
             f"router temperature: {_layout_text(layout['temperature'])}"]
    router = prov.get("router")
    if router and router.get("method", "ridge") != "ridge":
        lines.append(f"- routers: {router.get('description', router['method'])}")
    elif router:
        lines.append(f"- routers: closed-form ridge regression, λ = {router.get('lam')}, "
                     f"feature normalisation: {router.get('normalize')}, bias: {router.get('bias', True)}")
    else:
        lines.append("- routers: not fitted (random initialisation)")
    cal = dict(prov.get("calibration") or {})
    if prov.get("calibration_tokens"):
        cal["tokens per expert"] = ", ".join(map(str, prov["calibration_tokens"]))
    if cal:
        lines.append("- calibration: " + "; ".join(f"{k} = {v}" for k, v in cal.items()))
    return lines


def _opening(router: dict[str, Any] | None) -> str:
    if router and router.get("method") == "trained":
        return "Upcycled from dense experts as DUME does, then its routers trained"
    return "Built without training by DUME (training-free dynamic upcycling of expert language models)"


def _router_phrase(router: dict[str, Any] | None) -> str:
    """How the routers were made, for the card's opening paragraph."""
    if not router:
        return "the routers are left at their random initialisation"
    method = router.get("method", "ridge")
    if method == "ridge":
        return "each layer's router is a ridge regression solved in closed form from hidden-state statistics"
    description = router.get("description", method)
    return f"the routers come from a training-free rule: {description}" if method == "training-free" else \
        f"the routers are {description}"


def render_model_card(config: Any, loading: list[str] | None = None) -> str:
    """README.md text: YAML header (base_model, tags, library_name, licence), the DUME settings and how to load it
    (``loading``: the lines of that section; default: the native class)."""
    layout = config.dume_moe
    prov = dict(getattr(config, "dume_provenance", None) or {})
    experts = list(prov.get("experts") or [])
    data = ModelCardData(base_model=experts or None, tags=TAGS, library_name="transformers",
                         license=prov.get("license"), pipeline_tag="text-generation")
    domains = list(prov.get("domains") or [])
    lines = ["---", data.to_yaml(), "---", "",
             f"# DUME mixture of {layout['num_experts']} experts", "",
             f"{_opening(prov.get('router'))}: every non-MLP weight is the mean of the experts', each layer's MLP is "
             f"a mixture with one expert per domain, and {_router_phrase(prov.get('router'))}.", ""]
    if experts:
        names = domains if len(domains) == len(experts) else [str(i) for i in range(len(experts))]
        lines += ["## Experts", "", *_table(["expert", "model"], [[n, e] for n, e in zip(names, experts)]), ""]
    lines += ["## Settings", "", *_settings(layout, prov), ""]
    retention = prov.get("retention")
    if retention:
        cols = list(retention)
        lines += ["## Retention", "", "Score as a percentage of each domain's own dense expert.", "",
                  *_table(cols, [[retention[c] for c in cols]]), ""]
    lines += ["## Loading", "", *(loading or NATIVE_LOADING), ""]
    return "\n".join(lines)


NATIVE_LOADING = ["```python", "from transformers import AutoModelForCausalLM",
                  "model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)", "```", "",
                  "The modeling code is saved with the weights (`modeling_dume.py`); with the `dume_exp` package "
                  "imported, `trust_remote_code` is not needed."]
