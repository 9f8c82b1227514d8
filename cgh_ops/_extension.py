"""Loads the native extension ``cgh_ops._C`` if it was built.

Importing the shared library runs its static ``TORCH_LIBRARY_IMPL`` registrars, which
attach the CPU (and, in a CUDA build, CUDA) kernels to the schemas of ``_ops.py``. When it
is missing the package still works: every op falls back to the pure-PyTorch reference.
"""

from __future__ import annotations

import importlib
import warnings

LOAD_ERROR: str | None = None

try:
    importlib.import_module("cgh_ops._C")
    NATIVE = True
except ImportError as exc:  # not built (CGH_OPS_NO_EXTENSION=1, or a source checkout)
    NATIVE = False
    LOAD_ERROR = str(exc)
    warnings.warn(
        "cgh_ops: the native extension cgh_ops._C is not available "
        f"({exc}); every op runs on the pure-PyTorch reference kernels (correct, but slow). "
        "Build it with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )
