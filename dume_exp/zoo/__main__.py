"""``python -m dume_exp.zoo build clm|reasoning``: the command line lives in :mod:`dume_exp.cli.zoo`."""
from ..cli.zoo import main

if __name__ == "__main__":
    main()
