"""``python -m dume_exp +experiment=reasoning|clm [overrides]``: the Hydra app (:mod:`dume_exp.cli.run`)."""
from .cli.run import main
from .utils.allocator import reexec_with_jemalloc

if __name__ == "__main__":
    reexec_with_jemalloc("dume_exp")
    main()
