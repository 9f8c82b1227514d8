"""Coherent-gradient aggregation across data-parallel ranks (DDP communication hooks).

``ddp_model.register_comm_hook(MedianState(), median_hook)``, or
``install_median_hook(ddp_model)``, makes every rank's gradient the coordinate-wise median
of the ranks' gradients instead of their mean. See ``docs/DISTRIBUTED.md``.
"""

from .hooks import MedianState, all_reduce_median_, install_median_hook, median_hook

__all__ = ["MedianState", "median_hook", "install_median_hook", "all_reduce_median_"]
