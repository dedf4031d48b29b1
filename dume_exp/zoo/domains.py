"""The domains of the embedded zoo's settings, in order: the one list that its data builders, its experts, the
evaluation suites and the config validation share."""
from __future__ import annotations

CLM_DOMAINS: tuple[str, ...] = ("code", "math", "biomedical", "legal", "german")
REASONING_DOMAINS: tuple[str, ...] = ("math", "multilingual", "coding", "instruction")
SETTING_DOMAINS: dict[str, tuple[str, ...]] = {"clm": CLM_DOMAINS, "reasoning": REASONING_DOMAINS}
