"""``python -m dume_exp.export``: the command line lives in :mod:`dume_exp.cli.export`."""
from ..cli.export import main

if __name__ == "__main__":
    main()
