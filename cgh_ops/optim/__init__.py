"""Optimizers of Coherent Gradients: :class:`M3`, :class:`RM3`, :class:`RA3` (fused, exact median)."""

from ._ring import M3, RA3, RM3

__all__ = ["M3", "RM3", "RA3"]
