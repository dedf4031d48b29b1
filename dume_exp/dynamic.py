"""``python -m dume_exp.dynamic`` (add or remove an expert of a saved DUME model): the command line lives in :mod:`dume_exp.cli.dynamic`."""
from .cli.dynamic import main

if __name__ == "__main__":
    main()
