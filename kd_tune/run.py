"""``python -m kd_tune.run``: the command's kept spelling; it lives in :mod:`kd_tune.cli.run`."""
import sys

from kd_tune.cli.run import main

if __name__ == "__main__":
    sys.exit(main())
