"""Where a sweep keeps things, and how it writes them without leaving half a file.

- :mod:`~kd_tune.storage.location`: :class:`Storage`, one interface for a local folder or
  an object store (``s3://``) through ``pyarrow.fs``; writes whole or absent, conditional
  creates, a one-line check of a location;
- :mod:`~kd_tune.storage.atomic`: atomic local writes;
- :mod:`~kd_tune.storage.locks`: the one ``flock`` (shared or exclusive, waiting or not) and
  the file locks that name their holder;
- :mod:`~kd_tune.storage.store_lock`: a lock on any storage (a file lock locally, a renewed
  lease on an object store);
- :mod:`~kd_tune.storage.part_table`: a keyed Parquet table kept as a folder of part files;
- :mod:`~kd_tune.storage.local_copies`: node-local copies of stored folders, checked once
  per node, bounded.

May import: :mod:`kd_tune.core`.
"""
from kd_tune.storage.location import Storage, StorageError, is_uri, located, open_storage

__all__ = ["Storage", "StorageError", "is_uri", "located", "open_storage"]
