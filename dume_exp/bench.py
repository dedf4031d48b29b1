"""``python -m dume_exp.bench`` (benchmarks that print ratios): the command line lives in :mod:`dume_exp.cli.bench`."""
from .cli.bench import main

if __name__ == "__main__":
    main()
