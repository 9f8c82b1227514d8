"""The one place where the ``cgh`` ops are defined: schemas and fake (meta) kernels.

Backends only *implement* these schemas:

* ``cgh_ops/reference.py``: pure PyTorch, registered as the ``CompositeExplicitAutograd``
  kernel, i.e. the fallback for every device (used when the extension was not built);
* ``csrc/cpu/*.cpp``: native CPU kernels (``TORCH_LIBRARY_IMPL(cgh, CPU, m)``);
* ``csrc/cuda/*.cu``: native CUDA kernels (``TORCH_LIBRARY_IMPL(cgh, CUDA, m)``);
* ``triton_kernels/``: Triton kernels, exposed as their own ops (``cgh::<name>_triton``)
  so that Inductor can see through them; chosen by ``cgh_ops.set_cuda_backend``.

Argument checks live in :mod:`cgh_ops._checks` and run in the fake kernels (so
``torch.compile`` reports bad input at trace time), in the reference and, mirrored, in C++.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _checks

NAMESPACE = "cgh"

# Reductions accept a NaN policy as a bool in the schema (``omit_nan``); the public
# wrappers take the friendlier ``nan="propagate"|"omit"``.
SCHEMAS = {
    "median_of_means": "(Tensor x, int groups=3, bool omit_nan=False) -> Tensor",
    "median_of_means.out": "(Tensor x, int groups=3, bool omit_nan=False, *, Tensor(a!) out) -> ()",
    "median3": "(Tensor a, Tensor b, Tensor c, bool omit_nan=False) -> Tensor",
    "median3.out": "(Tensor a, Tensor b, Tensor c, bool omit_nan=False, *, Tensor(a!) out) -> ()",
    "foreach_median_of_means": "(Tensor[] xs, int groups=3, bool omit_nan=False) -> Tensor[]",
    "foreach_median_of_means.out": "(Tensor[] xs, int groups=3, bool omit_nan=False, *, Tensor(a!)[] out) -> ()",
    # The .out overloads return nothing (the wrappers in ops.py return `out`): a custom op
    # whose output aliases an input cannot be traced by AOTAutograd / torch.compile.
    "trimmed_mean": "(Tensor x, int trim) -> Tensor",
    "trimmed_mean.out": "(Tensor x, int trim, *, Tensor(a!) out) -> ()",
    "winsorized_mean": "(Tensor x, int trim) -> Tensor",
    "winsorized_mean.out": "(Tensor x, int trim, *, Tensor(a!) out) -> ()",
    # grad <- median(grad, *history); history[slot] <- raw grad (slot == -1: no write).
    "running_median_": "(Tensor(a!) grad, Tensor(b!)[] history, int slot, bool omit_nan=False) -> ()",
    # The same over a parameter list; history[i * R + j] is slot j of grads[i].
    "foreach_running_median_": "(Tensor(a!)[] grads, Tensor(b!)[] history, int slot, bool omit_nan=False) -> ()",
    # One fused optimizer step over a parameter list (M3 / RM3 / RA3):
    #   g = round(grad + weight_decay * param); history[i * R + slot] <- g (slot == -1: no write)
    #   reduce == "none":   parameters untouched (the step only stores g)
    #   reduce == "median": param -= lr * median(g, *history_i)    (history read before the write)
    #   reduce == "mean":   param -= lr * mean(g, *history_i)
    "ring_step_": (
        "(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] history, int slot, float lr, "
        "float weight_decay, str reduce, bool omit_nan=False) -> ()"
    ),
}

_lib = torch.library.Library(NAMESPACE, "FRAGMENT")
for _name, _schema in SCHEMAS.items():
    _lib.define(_name + _schema)


def op(name: str, overload: str = "default"):
    """The OpOverload ``torch.ops.cgh.<name>.<overload>``."""
    return getattr(getattr(torch.ops.cgh, name), overload)


# ----------------------------------------------------------------------------- fakes
@torch.library.register_fake("cgh::median_of_means")
def _median_of_means_fake(x: Tensor, groups: int = 3, omit_nan: bool = False) -> Tensor:
    _checks.check_median_of_means(x, groups)
    return x.new_empty(x.shape[1:])


@torch.library.register_fake("cgh::median3")
def _median3_fake(a: Tensor, b: Tensor, c: Tensor, omit_nan: bool = False) -> Tensor:
    _checks.check_same_floats({"a": a, "b": b, "c": c}, "median3")
    return torch.empty_like(a, memory_format=torch.contiguous_format)


@torch.library.register_fake("cgh::foreach_median_of_means")
def _foreach_median_of_means_fake(xs: list[Tensor], groups: int = 3, omit_nan: bool = False) -> list[Tensor]:
    for i, x in enumerate(xs):
        _checks.check_median_of_means(x, groups, f"xs[{i}]", "foreach_median_of_means")
    return [x.new_empty(x.shape[1:]) for x in xs]


def _trim_fake(name):
    def fake(x: Tensor, trim: int) -> Tensor:
        _checks.check_trim(x, trim, name)
        return x.new_empty(x.shape[1:])

    return fake


torch.library.register_fake("cgh::trimmed_mean", _trim_fake("trimmed_mean"))
torch.library.register_fake("cgh::winsorized_mean", _trim_fake("winsorized_mean"))


@torch.library.register_fake("cgh::running_median_")
def _running_median_fake(grad: Tensor, history: list[Tensor], slot: int, omit_nan: bool = False) -> None:
    _checks.check_running_median([grad], history, slot, "running_median_")


@torch.library.register_fake("cgh::foreach_running_median_")
def _foreach_running_median_fake(grads: list[Tensor], history: list[Tensor], slot: int, omit_nan: bool = False) -> None:
    _checks.check_running_median(grads, history, slot, "foreach_running_median_")


@torch.library.register_fake("cgh::ring_step_")
def _ring_step_fake(params, grads, history, slot, lr, weight_decay, reduce, omit_nan=False) -> None:
    _checks.check_ring_step(params, grads, history, slot, reduce)


# Out overloads: same checks, plus the out tensor's shape/dtype/device.
@torch.library.register_fake("cgh::median_of_means.out")
def _median_of_means_out_fake(x, groups=3, omit_nan=False, *, out):
    _checks.check_median_of_means(x, groups)
    _checks.check_out(out, x.shape[1:], x, "median_of_means")


@torch.library.register_fake("cgh::median3.out")
def _median3_out_fake(a, b, c, omit_nan=False, *, out):
    _checks.check_same_floats({"a": a, "b": b, "c": c}, "median3")
    _checks.check_out(out, a.shape, a, "median3")


@torch.library.register_fake("cgh::foreach_median_of_means.out")
def _foreach_median_of_means_out_fake(xs, groups=3, omit_nan=False, *, out):
    _checks.check_foreach_out(xs, groups, out)


def _trim_out_fake(name):
    def fake(x, trim, *, out):
        _checks.check_trim(x, trim, name)
        _checks.check_out(out, x.shape[1:], x, name)

    return fake


torch.library.register_fake("cgh::trimmed_mean.out", _trim_out_fake("trimmed_mean"))
torch.library.register_fake("cgh::winsorized_mean.out", _trim_out_fake("winsorized_mean"))
