"""Unpickling CIFAR's batch files without running code from them.

A pickle is a program: loading one calls whatever functions the file names, so a
crafted ``data_batch_1`` run through ``pickle.load`` (as torchvision's CIFAR loader
does) runs arbitrary code. The CIFAR batches, pickled by Python 2, need only dicts,
lists, strings, numbers and numpy arrays. :func:`load_cifar_pickle` admits exactly
those: the only names it resolves are the three numpy uses to rebuild an array
(``_reconstruct``, ``ndarray``, ``dtype``); any other name (``os.system``,
``builtins.exec``, a class of any module) is refused with :class:`RefusedPickle` before
anything is called. Persistent ids are refused by the unpickler itself.

Python 2 strings load as ``str`` (``encoding="latin1"``, torchvision's choice), so keys
read ``"data"``, ``"labels"``, ``"fine_labels"`` as in the official files.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1
    from numpy.core.multiarray import _reconstruct

# Everything a pickled numpy array names: numpy 1 (the official files) and numpy 2 spell
# the module differently.
_ADMITTED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RefusedPickle(pickle.UnpicklingError):
    """The file names a function or class that CIFAR data never needs; nothing of it was called."""


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ADMITTED[(module, name)]
        except KeyError:
            raise RefusedPickle(f"it names {module}.{name}, which CIFAR data never contains") from None


def load_cifar_pickle(path: str | os.PathLike) -> Any:
    """The object pickled in ``path``, built from plain containers and numpy arrays only.

    Raises :class:`RefusedPickle` for a file that names anything else, and the usual
    ``pickle.UnpicklingError``/``EOFError``/``ValueError`` for a damaged one. Object
    arrays can still come back (their items are loaded by the same rules); callers check
    dtypes.
    """
    with open(path, "rb") as handle:
        return _CifarUnpickler(handle, encoding="latin1").load()
