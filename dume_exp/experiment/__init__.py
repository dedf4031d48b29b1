"""The Hydra app's run: the config schema, validation, experts and their data, scoring with caches, results cells."""
