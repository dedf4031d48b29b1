"""``python -m dume_exp.sweeps`` (sweep launchers): the command line lives in :mod:`dume_exp.cli.sweeps`."""
from .cli.sweeps import main

if __name__ == "__main__":
    main()
