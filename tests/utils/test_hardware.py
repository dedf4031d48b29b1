"""The precision decision: bf16 only with native hardware support, and a null switch keys as what it resolves to."""
import pytest
import torch

import dume_exp.experiment.config as config_mod
from dume_exp.experiment.cells import cell_path
from dume_exp.experiment.config import AUTO_BF16, resolve_auto_precision
from dume_exp.utils import hardware
from dume_exp.zoo.train import TrainConfig, expert_recipe
from tests.helpers import compose_app


def test_explicit_switches_win_and_null_follows_the_hardware(monkeypatch):
    cpu_native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert hardware.native_bf16("cpu") == cpu_native and hardware.native_bf16("meta") is False
    for native in (True, False):
        monkeypatch.setattr(hardware, "native_bf16", lambda device="cpu", n=native: n)
        assert hardware.use_bf16(None) is native and hardware.use_bf16(True) and not hardware.use_bf16(False)


@pytest.mark.parametrize("native", [True, False])
def test_a_null_switch_keys_and_records_as_the_decision(monkeypatch, native):
    monkeypatch.setattr(config_mod, "native_bf16", lambda device="cpu": native)
    auto = compose_app("+experiment=reasoning")
    assert [auto.eval.bf16, auto.calibration.bf16, auto.router_training.bf16] == [None] * 3  # the embedded defaults
    explicit = compose_app("+experiment=reasoning", *(f"{k}={str(native).lower()}" for k in AUTO_BF16))
    assert cell_path(auto) == cell_path(explicit)
    resolve_auto_precision(auto)
    assert [auto.eval.bf16, auto.calibration.bf16, auto.router_training.bf16] == [native] * 3


def test_experts_trained_in_fp32_for_lack_of_native_bf16_get_their_own_recipe(monkeypatch):
    import dume_exp.zoo.train as train

    manifest, cfg = {"model_sha256": "x"}, TrainConfig(bf16=True)
    monkeypatch.setattr(train, "native_bf16", lambda device: True)
    with_bf16 = expert_recipe(manifest, "data", cfg)
    monkeypatch.setattr(train, "native_bf16", lambda device: False)
    assert expert_recipe(manifest, "data", cfg)["train"]["bf16"] is False and with_bf16["train"]["bf16"] is True
    assert expert_recipe(manifest, "data", TrainConfig(bf16=False)) == expert_recipe(manifest, "data", cfg)


def test_auto_takes_cuda_then_mps_then_the_cpu(monkeypatch):
    for cuda, mps, expected in ((True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda c=cuda: c)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda m=mps: m)
        assert hardware.pick_device("auto") == torch.device(expected)


def test_a_named_device_must_exist(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hardware.pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device='cuda:1': this machine has no such device; use device=auto"):
        hardware.pick_device("cuda:1")
    with pytest.raises(ValueError, match="device='gpu' is not a device name"):
        hardware.pick_device("gpu")


def test_the_resolved_device_is_recorded_and_keys_cpu_runs_as_before(monkeypatch):
    """``device=auto`` resolves to what this machine has; a CPU run keys as before the knob existed (a GPU run gets
    its own cell), and the bf16 decision is that device's."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    auto, cpu = compose_app("+experiment=clm"), compose_app("+experiment=clm", "device=cpu", "zoo.device=cpu")
    cpu_key = cell_path(cpu)
    assert cell_path(auto) == cpu_key
    resolve_auto_precision(auto)
    assert (auto.device, auto.zoo.device) == ("cpu", "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    seen = []
    monkeypatch.setattr(config_mod, "native_bf16", lambda device: seen.append(str(device)) or True)
    gpu = compose_app("+experiment=clm")
    assert cell_path(gpu) != cpu_key
    resolve_auto_precision(gpu)
    assert gpu.device == "cuda" and set(seen) == {"cuda"} and gpu.eval.bf16 is True
