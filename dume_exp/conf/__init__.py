"""The Hydra config tree of the app (a package so that ``pkg://dume_exp.conf`` finds it when installed)."""
