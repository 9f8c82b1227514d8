"""The native extension's CUDA half: every op overload has a CUDA kernel in a CUDA build.

Needs no GPU (the kernels are registered when cgh_ops._C loads); on a CPU-only build, or
without the extension, the test is skipped with the reason.
"""

import warnings

import pytest
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # no native extension: skipped below
    from cgh_ops import _extension, _ops


def _registered(name: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"cgh::{name}", key)


def _is_cuda_build() -> bool:
    # A CUDA build registers median3's CUDA kernel; a CPU-only build registers none.
    return _extension.NATIVE and _registered("median3", "CUDA")


@pytest.mark.skipif(not _extension.NATIVE, reason="cgh_ops._C is not built (reference kernels only)")
@pytest.mark.skipif(_extension.NATIVE and not _is_cuda_build(), reason="cgh_ops._C is a CPU-only build")
@pytest.mark.parametrize("name", sorted(_ops.SCHEMAS))
def test_every_op_has_a_cuda_kernel(name):
    # One case per op overload of the schema table: a missing m.impl would silently fall
    # back to the reference on GPUs.
    assert _registered(name, "CUDA"), f"cgh::{name} has no CUDA kernel"

