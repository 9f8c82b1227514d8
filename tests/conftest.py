"""Shared test machinery: Triton on CPU, seeding, and the backends the op tests run on.

A test that takes the ``backend`` fixture runs once per backend:

* ``reference``: the pure-PyTorch kernels of ``cgh_ops.reference`` called directly (the
  functions registered as the fallback for every device), on CPU tensors;
* ``cpu``: ``torch.ops.cgh.*`` on CPU tensors, when the native CPU kernel is built;
* ``cuda``: ``torch.ops.cgh.*`` on CUDA tensors, with a GPU and the CUDA kernels built;
* ``triton``: the Triton kernels of ``cgh_ops.ops.TRITON_KERNELS``, on CUDA tensors, or
  on CPU tensors under ``TRITON_INTERPRET=1`` when there is no GPU. The interpreter is
  slow (seconds per call), so there only tests marked ``small`` (few, small cases) run it.

A backend that is not available here is skipped with the reason.
"""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest
import torch

# Without a GPU, Triton kernels can still run in its interpreter. The variable must be set
# before anything imports triton; importing torch does not, so checking CUDA first is safe.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import cgh_ops  # noqa: E402,F401  (defines the cgh ops; warns when the extension is missing)
from cgh_ops import reference  # noqa: E402

BACKENDS = ("reference", "cpu", "cuda", "triton")
HAS_CUDA = torch.cuda.is_available()
TRITON_INTERPRETED = not HAS_CUDA


def qualified(name: str, overload: str = "default") -> str:
    """The dispatcher's name of an op overload: ``cgh::median3`` or ``cgh::median3.out``."""
    return f"cgh::{name}" if overload == "default" else f"cgh::{name}.{overload}"


def has_native_kernel(name: str, overload: str, dispatch_key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(qualified(name, overload), dispatch_key)


NATIVE_CPU = has_native_kernel("median3", "default", "CPU")
NATIVE_CUDA = has_native_kernel("median3", "default", "CUDA")


def triton_kernels() -> dict:
    """``TRITON_KERNELS`` once ``cgh_ops._triton`` registered them (empty if it cannot)."""
    try:
        from cgh_ops import _triton  # noqa: F401
    except ImportError:
        return {}
    return cgh_ops.ops.TRITON_KERNELS


class Backend:
    """One way of running the ``cgh`` ops: ``backend.op(name, overload)(*args)`` on ``backend.device``."""

    def __init__(self, name: str):
        self.name = name
        self.device = torch.device("cuda" if name == "cuda" or (name == "triton" and HAS_CUDA) else "cpu")

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, {self.device})"

    def op(self, name: str, overload: str = "default"):
        """A callable with the op's schema signature; skips the test if this backend lacks it."""
        if self.name == "reference":
            # reference._KERNELS is exactly the table registered as the fallback kernels.
            return reference._KERNELS[name if overload == "default" else f"{name}.{overload}"]
        if self.name == "triton":
            fn = triton_kernels().get((name, overload))
            if fn is None:
                pytest.skip(f"no Triton kernel for {qualified(name, overload)}")
            return fn
        key = "CPU" if self.name == "cpu" else "CUDA"
        if not has_native_kernel(name, overload, key):
            pytest.skip(f"no native {key} kernel for {qualified(name, overload)}")
        return getattr(getattr(torch.ops.cgh, name), overload)

    def put(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device)


def _backend_unavailable(name: str) -> str | None:
    """Why backend ``name`` cannot run here (None if it can)."""
    if name == "cpu" and not NATIVE_CPU:
        return "native CPU kernels not built (cgh_ops._C missing or without CPU kernels)"
    if name == "cuda":
        if not HAS_CUDA:
            return "no CUDA device"
        if not NATIVE_CUDA:
            return "native CUDA kernels not built"
    if name == "triton" and not triton_kernels():
        return "cgh_ops._triton absent or registered no kernels"
    return None


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "small: few, small cases; also run on Triton's (slow) CPU interpreter"
    )


def pytest_generate_tests(metafunc):
    explicit = any("backend" in m.args[0] for m in metafunc.definition.iter_markers("parametrize"))
    if "backend" in metafunc.fixturenames and not explicit:  # a test may name its own backends
        names = list(BACKENDS)
        if TRITON_INTERPRETED and not metafunc.definition.get_closest_marker("small"):
            names.remove("triton")
        metafunc.parametrize("backend", names, indirect=True)


@pytest.fixture
def backend(request) -> Backend:
    reason = _backend_unavailable(request.param)
    if reason:
        pytest.skip(reason)
    return Backend(request.param)


def _seed_of(request) -> int:
    # Stable across runs and independent of test order: derived from the test's id.
    return zlib.crc32(request.node.nodeid.encode())


@pytest.fixture(autouse=True)
def _seed_torch(request):
    torch.manual_seed(_seed_of(request))


@pytest.fixture
def rng(request) -> np.random.Generator:
    return np.random.default_rng(_seed_of(request))
