"""When a ring of ``k - 1`` history buffers stores and when it reduces.

One schedule, shared by the optimizers (:mod:`cgh_ops.optim`) and the gradient transforms
(:mod:`cgh_ops.aggregate`). Each function maps the number of gradients a parameter has
already seen (``done``) to ``(slot, ready)``: the history slot the current gradient is
written to (``-1``: none) and whether this call reduces the current gradient together with
the ``k - 1`` stored ones.
"""

from __future__ import annotations


def groups_of_k(done: int, k: int) -> tuple[int, bool]:
    """Median of k means (M3, MedianOfMeans): calls 1..k-1 of each cycle of k store into
    slots 0..k-2; the k-th reduces and stores nothing."""
    pos = done % k
    return (-1, True) if pos == k - 1 else (pos, False)


def running_window(done: int, k: int) -> tuple[int, bool]:
    """Running window of k (RM3/RA3, RunningMedian): calls 1..k-1 only store; from the k-th
    on every call reduces and overwrites the oldest slot."""
    if k == 1:
        return -1, True
    return done % (k - 1), done >= k - 1
