"""The Triton backend: imports the Triton kernels and registers them with :mod:`cgh_ops.ops`.

Importing this module defines the ops ``torch.ops.cgh.<name>_triton`` (see
``triton_kernels/median.py`` for why they are ops of their own) and fills
``cgh_ops.ops.TRITON_KERNELS[(name, overload)]`` with callables of the ``cgh::<name>``
signature, which ``cgh_ops.set_cuda_backend("triton")`` routes CUDA tensors to.

The kernels live in the top-level folder ``triton_kernels/`` of the source tree and are
installed as ``cgh_ops.triton_kernels`` (``setup.py``'s ``package_dir``), never as a
top-level ``triton_kernels`` (a published package of that name exists). In a source
checkout that was not installed, ``cgh_ops.triton_kernels`` does not exist yet: we load
the folder under that same name by path, so the published package is never shadowed.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import torch

from .ops import TRITON_KERNELS

_PACKAGE = "cgh_ops.triton_kernels"


def _import_kernels():
    try:
        return importlib.import_module(_PACKAGE)
    except ModuleNotFoundError as exc:
        if exc.name != _PACKAGE:  # a real missing dependency (triton itself): report it
            raise
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "triton_kernels")
    spec = importlib.util.spec_from_file_location(
        _PACKAGE, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder]
    )
    if spec is None:
        raise ImportError(f"cgh_ops: the Triton kernels are neither installed as {_PACKAGE} nor in {folder}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_PACKAGE] = module
    spec.loader.exec_module(module)
    return module


_import_kernels()
median = importlib.import_module(_PACKAGE + ".median")
trimmed = importlib.import_module(_PACKAGE + ".trimmed")
running = importlib.import_module(_PACKAGE + ".running")


def _out_form(op):
    """``fn(*args, out=)`` of a ``cgh::<name>.out`` overload from a ``<name>_out_triton`` op
    (returning nothing, like the overload; the public wrappers return ``out``)."""

    def fn(*args, out):
        op(*args, out)

    return fn


_ops = torch.ops.cgh


def _foreach_out(xs, groups=3, omit_nan=False, *, out):
    _ops.foreach_median_of_means_out_triton(xs, groups, omit_nan, out)

TRITON_KERNELS.update(
    {
        ("median_of_means", "default"): _ops.median_of_means_triton,
        ("median_of_means", "out"): _out_form(_ops.median_of_means_out_triton),
        ("median3", "default"): _ops.median3_triton,
        ("median3", "out"): _out_form(_ops.median3_out_triton),
        ("foreach_median_of_means", "default"): _ops.foreach_median_of_means_triton,
        ("foreach_median_of_means", "out"): _foreach_out,
        ("trimmed_mean", "default"): _ops.trimmed_mean_triton,
        ("trimmed_mean", "out"): _out_form(_ops.trimmed_mean_out_triton),
        ("winsorized_mean", "default"): _ops.winsorized_mean_triton,
        ("winsorized_mean", "out"): _out_form(_ops.winsorized_mean_out_triton),
        ("running_median_", "default"): _ops.running_median_triton_,
        ("foreach_running_median_", "default"): _ops.foreach_running_median_triton_,
        ("ring_step_", "default"): _ops.ring_step_triton_,
    }
)
