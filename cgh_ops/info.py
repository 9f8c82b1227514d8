"""``python -m cgh_ops.info``: what this install of cgh_ops was built with and what runs where.

Prints the torch/CUDA/Triton versions, which native backends the extension carries (CPU,
CUDA and its architectures, Triton), and for every op and device the kernel the dispatcher
picks: ``native`` (C++/CUDA), ``reference`` (the pure-PyTorch fallback) or ``triton``.
"""

from __future__ import annotations

import json
import os

import torch

import cgh_ops
from cgh_ops import _extension, ops
from cgh_ops._ops import SCHEMAS

DEVICES = ("CPU", "CUDA")


def build_info() -> dict:
    """What setup.py recorded when it built the extension (empty if it was not built)."""
    path = os.path.join(os.path.dirname(cgh_ops.__file__), "_build_info.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def kernel_for(qualname: str, device: str) -> str:
    if torch._C._dispatch_has_kernel_for_dispatch_key(qualname, device):
        return "native"
    return "reference"


def triton_status() -> str:
    try:
        import triton
    except ImportError:
        return "not installed"
    try:
        from cgh_ops import _triton  # noqa: F401
    except ImportError as exc:
        return f"triton {triton.__version__}; cgh Triton kernels unavailable ({exc})"
    names = sorted({name for name, _ in ops.TRITON_KERNELS})
    return f"triton {triton.__version__}; kernels for {len(names)} ops ({', '.join(names)})"


def report() -> str:
    info = build_info()
    lines = [
        f"cgh_ops {cgh_ops.__version__}",
        f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'}), "
        f"CUDA device present: {torch.cuda.is_available()}",
        "native extension: "
        + ("loaded" if _extension.NATIVE else f"NOT loaded ({_extension.LOAD_ERROR}); every op runs the reference"),
    ]
    if info:
        lines.append(
            f"built with: CUDA kernels {'yes' if info.get('cuda') else 'no'}"
            + (f" (archs {info.get('cuda_arch_list')}, nvcc from {info.get('cuda_home')})" if info.get("cuda") else "")
        )
    if _extension.NATIVE:
        from cgh_ops import _C

        lines.append(
            f"CPU kernels: {_C.cpu_capability} build (best of AVX512, AVX2, DEFAULT for this CPU; "
            "ATEN_CPU_CAPABILITY=avx2 or =default caps it)"
        )
    lines.append(f"Triton: {triton_status()}")
    lines.append(f"CUDA backend for the wrappers: {ops.get_cuda_backend()} (cgh_ops.set_cuda_backend)")
    lines.append("")
    width = max(len(name) for name in SCHEMAS) + 2
    lines.append("op".ljust(width) + "".join(d.ljust(12) for d in DEVICES) + "Triton (CUDA)")
    for name in SCHEMAS:
        qualname = "cgh::" + name
        op_name, _, overload = name.partition(".")
        triton = "yes" if (op_name, overload or "default") in ops.TRITON_KERNELS else "no"
        lines.append(name.ljust(width) + "".join(kernel_for(qualname, d).ljust(12) for d in DEVICES) + triton)
    return "\n".join(lines)


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
