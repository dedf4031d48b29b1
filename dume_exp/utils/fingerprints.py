"""Digests of tensors, two formats for two jobs (both stored on disk, so neither may change):

- :func:`tensor_fingerprint` (BLAKE2b-128 of unnamed tensors in order): cache keys of statistics, router training
  and evaluations, where weights are hashed often and order is given;
- :func:`tensors_sha256` (SHA-256 of named tensors by name): the integrity checksum stored inside statistics files.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import torch


def _feed(h: Any, header: str, tensor: torch.Tensor) -> None:
    h.update(header.encode())
    h.update(tensor.reshape(-1).view(torch.uint8).numpy())  # the buffer itself, not a copy


def tensor_fingerprint(tensors: Iterable[torch.Tensor]) -> str:
    """Digest of the tensors' dtypes, shapes and bytes, in order."""
    h = hashlib.blake2b(digest_size=16)
    for t in tensors:
        t = t.detach().cpu().contiguous()
        _feed(h, f"{t.dtype}{tuple(t.shape)}", t)
    return h.hexdigest()


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 of named tensors (names, dtypes, shapes and bytes, by name)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        _feed(h, f"{name}\0{t.dtype}\0{tuple(t.shape)}\0", t)
    return h.hexdigest()


def batches_fingerprint(batches: Iterable[Mapping[str, torch.Tensor]]) -> str:
    """:func:`tensor_fingerprint` of every batch's tensors (by key within a batch)."""
    return tensor_fingerprint(t for b in batches for k in sorted(b) for t in [torch.as_tensor(b[k])])
