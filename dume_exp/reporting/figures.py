"""The routing figure of a run (PNG): per-layer routing accuracy and the domain × expert routing matrix."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..utils.cache import atomic_file  # noqa: E402


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def routing_matrices(results: dict[str, Any], name: str = "dume") -> np.ndarray | None:
    """``[layers, domains, experts]`` share of each domain's tokens sent to each expert (first seed)."""
    row = next((r for r in results["seeds"][0]["rows"] if r["name"] == name), None)
    if row is None or not row.get("routing_counts"):
        return None
    counts = np.array([row["routing_counts"][d] for d in results["domains"]], dtype=float)  # [domains, L, E]
    return (counts / counts.sum(axis=2, keepdims=True)).transpose(1, 0, 2)


def routing_figure(results: dict[str, Any], path: Path, name: str = "dume") -> Path | None:
    """Per-layer routing accuracy against domain labels, and the domain × expert matrix (best layer, average),
    drawn to the PNG ``path``; ``None`` when the results have no routing counts for ``name``."""
    shares = routing_matrices(results, name)
    if shares is None:
        return None
    domains = results["domains"]
    accuracy = np.array([[shares[layer, d, d] for d in range(len(domains))] for layer in range(shares.shape[0])])
    best = int(accuracy.mean(axis=1).argmax())
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), gridspec_kw={"width_ratios": [1.6, 1, 1]}, layout="constrained")
    for d, domain in enumerate(domains):
        axes[0].plot(accuracy[:, d], marker=".", label=domain)
    axes[0].plot(accuracy.mean(axis=1), color="black", linewidth=2.5, label="mean")
    axes[0].axhline(1 / len(domains), color="grey", linestyle=":", label="chance")
    axes[0].set(xlabel="layer", ylabel="tokens routed to their domain's expert", ylim=(0, 1.02),
                title=f"{name}: routing accuracy per layer (held-out test tokens)")
    axes[0].legend(fontsize=8, ncol=2)
    for ax, mat, title in ((axes[1], shares[best], f"layer {best} (best)"), (axes[2], shares.mean(axis=0), "mean over layers")):
        im = ax.imshow(mat, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(domains)), domains, rotation=45, ha="right")
        ax.set_yticks(range(len(domains)), domains if ax is axes[1] else [])
        ax.set(xlabel="expert", title=f"routing share, {title}")
        if ax is axes[1]:
            ax.set_ylabel("domain of the tokens")
        for i in range(len(domains)):
            for j in range(len(domains)):
                ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if mat[i, j] < 0.5 else "black")
    fig.colorbar(im, ax=axes[1:], shrink=0.8)
    return save_figure(fig, path)
