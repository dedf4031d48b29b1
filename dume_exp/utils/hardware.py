"""The one place that decides the compute precision for the device at hand.

bf16 is used only where the hardware computes it natively: CUDA devices that support it, CPUs with AVX512-BF16 or
AMX. Elsewhere (e.g. AVX2-only CPUs, where bf16 matmuls are emulated and several times slower than fp32) the
work stays in fp32.
"""
from __future__ import annotations

import torch


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` computes bf16 natively."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False  # mps and others: no bf16 path we have measured


def use_bf16(setting: bool | None, device: str | torch.device = "cpu") -> bool:
    """A bf16 switch of the config: ``True``/``False`` as given, ``None`` (auto) when ``device`` has native bf16."""
    return native_bf16(device) if setting is None else bool(setting)
