"""The one warm-up + cosine schedule reproduces the expert trainer's and the router trainer's former schedules."""
from __future__ import annotations

import math

import pytest

from dume_exp.utils.schedule import warmup_cosine

SETTINGS = [(0, 1), (0, 2), (0, 10), (1, 1), (1, 2), (2, 2), (3, 2), (2, 10), (4, 40), (10, 110), (5, 6)]


def trainer_reference(step: int, warmup: int, steps: int, min_ratio: float) -> float:
    """The expert trainer's schedule: cosine decay reaching ``min_ratio`` at the last step (``steps - 1``)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup - 1)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def router_reference(step: int, warmup: int, steps: int, min_ratio: float) -> float:
    """The router trainer's schedule: cosine decay reaching ``min_ratio`` at ``steps``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@pytest.mark.parametrize("warmup,steps", SETTINGS)
@pytest.mark.parametrize("min_ratio", [0.0, 0.1, 1.0])
def test_warmup_cosine_equals_both_former_schedules(warmup, steps, min_ratio):
    for step in range(steps + warmup + 3):
        assert warmup_cosine(step, warmup_steps=warmup, total_steps=steps - 1, min_ratio=min_ratio) \
            == trainer_reference(step, warmup, steps, min_ratio)
        assert warmup_cosine(step, warmup_steps=warmup, total_steps=steps, min_ratio=min_ratio) \
            == router_reference(step, warmup, steps, min_ratio)


def test_call_sites_use_it():
    from dume_exp.strategies.router_training import RouterTrainingConfig
    from dume_exp.strategies.router_training import lr_factor as router_factor
    from dume_exp.zoo.train import TrainConfig
    from dume_exp.zoo.train import lr_factor as trainer_factor

    trainer = TrainConfig(steps=10, warmup_steps=2, min_lr_ratio=0.1)
    assert [trainer_factor(s, trainer) for s in range(12)] == [trainer_reference(s, 2, 10, 0.1) for s in range(12)]
    router = RouterTrainingConfig(steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert [router_factor(s, router) for s in range(120)] == [router_reference(s, 10, 110, 0.1) for s in range(120)]


def test_shape():
    factors = [warmup_cosine(s, warmup_steps=2, total_steps=9, min_ratio=0.1) for s in range(12)]
    assert factors[:3] == [0.5, 1.0, 1.0] and factors[9:] == [pytest.approx(0.1)] * 3
    assert all(a >= b for a, b in zip(factors[1:], factors[2:]))
