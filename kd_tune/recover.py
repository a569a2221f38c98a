"""``python -m kd_tune.recover``: the command's kept spelling; it lives in :mod:`kd_tune.cli.recover`."""
import sys

from kd_tune.cli.recover import main

if __name__ == "__main__":
    sys.exit(main())
