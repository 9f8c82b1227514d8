"""cgh_ops: fused group-mean and coordinate-wise median kernels for Coherent Gradients.

Ops (``torch.ops.cgh.*``, wrapped here): :func:`median_of_means`, :func:`median3`,
:func:`foreach_median_of_means`, :func:`trimmed_mean`, :func:`winsorized_mean`,
:func:`running_median_`, :func:`foreach_running_median_`.
"""

from . import _ops  # noqa: F401  (schemas and fake kernels)
from . import reference  # noqa: F401  (the fallback kernels)
from . import _extension  # noqa: F401  (native kernels, if built; else a warning)
from .ops import (  # noqa: F401
    foreach_median_of_means,
    foreach_running_median_,
    get_cuda_backend,
    median3,
    median_of_means,
    ring_step_,
    running_median_,
    set_cuda_backend,
    trimmed_mean,
    winsorized_mean,
)

__version__ = "0.1.0"
