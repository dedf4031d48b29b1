"""Building blocks of the structured-config schemas: enumerated choices and range checks of fields.

A field typed with a :class:`Choice` is checked by OmegaConf itself (a bad value fails at compose time, listing
the valid ones); a range cannot be a type, so :func:`checked` attaches it to the field for
:func:`dume_exp.experiment.config.check_config`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import field
from enum import Enum
from typing import Any, Optional

Check = Callable[[Any], Optional[str]]  # None: the value is valid; else what it must be


class Choice(str, Enum):
    """An enumerated string setting whose members are named as their values: a member equals, hashes, formats
    and JSON-encodes as its plain string."""

    def __str__(self) -> str:
        return self.value


def choice_enum(name: str, values: Iterable[str], module: str) -> type[Choice]:
    """A :class:`Choice` with one member per value, defined in ``module`` (so that it pickles by reference)."""
    return Choice(name, [(v, v) for v in values], module=module)


def checked(check: Check, **field_kwargs: Any) -> Any:
    """A schema field whose value :func:`~dume_exp.experiment.config.check_config` tests with ``check`` (OmegaConf
    ignores the metadata)."""
    return field(metadata={"check": check}, **field_kwargs)


def at_least(low: int) -> Check:
    """≥ ``low``; ``None`` (the field's "unset") passes."""
    return lambda value: None if value is None or value >= low else f"≥ {low}"


def each_at_least(low: int) -> Check:
    """A mapping whose every value is ≥ ``low``."""
    return lambda value: None if all(v >= low for v in value.values()) else f"a mapping with every value ≥ {low}"


def positive_finite(value: float) -> str | None:
    return None if math.isfinite(value) and value > 0 else "a finite number > 0"
