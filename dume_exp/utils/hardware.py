"""The one place that decides the device a run computes on and its compute precision.

``auto`` takes a CUDA GPU, else Apple's MPS, else the CPU.

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


def pick_device(setting: str | torch.device = "auto") -> torch.device:
    """The device for ``setting``: ``auto`` (CUDA, else MPS, else the CPU) or a named device, refused when absent."""
    if str(setting) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(setting)
    except RuntimeError as err:
        raise ValueError(f"device={setting!r} is not a device name; use auto, cpu, cuda, cuda:<index> or mps.") from err
    present = {"cpu": True, "cuda": torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count(),
               "mps": torch.backends.mps.is_available()}.get(device.type, False)
    if not present:
        raise ValueError(f"device={setting!r}: this machine has no such device; use device=auto (CUDA, else MPS, "
                         "else the CPU) or device=cpu.")
    return device
