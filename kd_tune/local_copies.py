"""``python -m kd_tune.local_copies``: the command's kept spelling; it lives in :mod:`kd_tune.storage.local_copies`."""
import sys

from kd_tune.storage.local_copies import main

if __name__ == "__main__":
    sys.exit(main())
