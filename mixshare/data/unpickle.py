"""A restricted unpickler for dataset files: numpy arrays, dtypes, scalars and plain builtin data only."""

from __future__ import annotations

import builtins
import codecs
import pickle
from typing import Optional

import numpy as np

__all__ = ["ForbiddenGlobalError", "SafeUnpickler", "safe_pickle_load"]


class ForbiddenGlobalError(pickle.UnpicklingError):
    """A pickle referred to a global that ``SafeUnpickler`` does not admit."""


_SAFE_ENCODINGS = frozenset({"latin1", "latin-1", "latin_1", "iso-8859-1", "utf-8", "utf8", "ascii"})


def _codecs_encode(obj, encoding: str = "utf-8", errors: str = "strict"):
    """``_codecs.encode`` as protocol-2 pickles of bytes use it, limited to plain text codecs."""
    if not isinstance(obj, str) or encoding not in _SAFE_ENCODINGS or errors != "strict":
        raise ForbiddenGlobalError(f"refusing _codecs.encode with encoding {encoding!r}")
    return codecs.encode(obj, encoding)


def _safe_globals() -> dict[tuple[str, str], object]:
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # pragma: no cover - numpy < 2
        from numpy.core import multiarray, numeric
    table: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs_encode,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(module, "_reconstruct")] = multiarray._reconstruct
        table[(module, "scalar")] = multiarray.scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        table[(module, "_frombuffer")] = numeric._frombuffer
    plain = ("bool", "int", "float", "complex", "str", "bytes", "bytearray", "list", "tuple", "dict",
             "set", "frozenset", "slice", "range")
    for module in ("builtins", "__builtin__"):  # Python 3 and Python 2 names
        for name in plain:
            table[(module, name)] = getattr(builtins, name)
    return table


_SAFE_GLOBALS: Optional[dict[tuple[str, str], object]] = None


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds only numpy arrays/dtypes/scalars and plain builtin data.

    Any other global (``os.system``, ``builtins.eval``, ...) raises ``ForbiddenGlobalError``, a
    ``pickle.UnpicklingError``, before anything is called.
    """

    def find_class(self, module: str, name: str):
        global _SAFE_GLOBALS
        if _SAFE_GLOBALS is None:
            _SAFE_GLOBALS = _safe_globals()
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise ForbiddenGlobalError(
                f"refusing to unpickle global {module}.{name}: dataset files may hold only numpy arrays "
                "and plain builtin data"
            ) from None

    def persistent_load(self, pid):
        raise ForbiddenGlobalError("refusing a pickle with persistent ids")


def safe_pickle_load(file, encoding: str = "bytes"):
    """``pickle.load`` through ``SafeUnpickler`` (``encoding="bytes"``: Python 2 strings stay bytes)."""
    return SafeUnpickler(file, encoding=encoding).load()
