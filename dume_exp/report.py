"""``python -m dume_exp.report`` (tables and figures from results): the command line lives in :mod:`dume_exp.cli.report`."""
from .cli.report import main

if __name__ == "__main__":
    main()
