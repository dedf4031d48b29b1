"""Learning-rate schedules, as factors of the base learning rate (for ``torch.optim.lr_scheduler.LambdaLR``)."""
from __future__ import annotations

import math


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up to 1 over ``warmup_steps`` (step ``warmup_steps - 1`` reaches it), then cosine decay that
    reaches ``min_ratio`` at step ``total_steps`` and stays there."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
