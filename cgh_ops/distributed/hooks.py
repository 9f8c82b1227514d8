"""The coordinate-wise median across data-parallel ranks, as a DDP communication hook.

DDP's default hook all-reduces each gradient bucket and divides by the world size: the mean
of the ranks' gradients. :func:`median_hook` returns their coordinate-wise median instead
(or, with ``groups=g``, the median of the means of ``g`` contiguous groups of ranks), so a
minority of ranks sending garbage cannot move the result outside the honest ranks' range.

Algorithm, for a flat bucket of ``n`` elements on ``W`` ranks (``s = ceil(n / W)``):

1. all-to-all: rank ``j`` receives shard ``j`` (elements ``[j*s, (j+1)*s)``) of every rank's
   bucket. The receive buffer is naturally ``[W, s]``, row ``i`` from rank ``i``: exactly
   the ``[m, *S]`` input of :func:`cgh_ops.median_of_means`, with no stacking copy.
2. each rank reduces its shard over the ranks with the fused op;
3. all-gather the reduced shards back into the bucket.

Each rank sends ``2 * (W - 1) / W * n`` elements, the traffic of a ring all-reduce, where
all-gathering whole buckets and reducing locally would send ``(W - 1) * n``. Large buckets
go in pieces, pipelined, so that reducing one piece overlaps the transfer of the others.
"""

# No `from __future__ import annotations`: DDP checks median_hook's annotations against
# dist.GradBucket and Future[Tensor] as objects, and string annotations would fail that check.
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

from .. import _checks
from ..ops import median_of_means

__all__ = ["MedianState", "median_hook", "install_median_hook", "all_reduce_median_"]

# all_gather_single replaces all_gather_into_tensor (deprecated in recent torch releases).
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor

# Codes for the agreement check; anything else is sent as -1 (the op then rejects it).
_DTYPE_CODES = {dtype: code for code, dtype in enumerate(_checks.FLOAT_DTYPES)}


class MedianState:
    """State of :func:`median_hook`: the process group, the reduction and a reusable workspace.

    Args:
        process_group: the group of data-parallel ranks; ``None`` is the default group.
        groups: the number of rank groups whose means are medianed; ``None`` means one group
            per rank (the plain median of the ranks' gradients). Must be in ``[1, world size]``.
        nan: ``"propagate"`` (a NaN from any rank gives NaN there) or ``"omit"`` (NaNs are
            left out of the median; all-NaN gives NaN).
        check_iterations: for this many synchronizing backward passes every rank compares
            its bucket sizes, dtypes and settings with the other ranks' before reducing, and
            all raise a clear error on a mismatch. Two covers DDP's buckets before and after
            their one-time rebuild after the first iteration; after that they are fixed, and
            the check (one small blocking all-gather per bucket) is skipped.
        piece_shard: a bucket is exchanged in pieces of ``world * piece_shard`` elements so
            that the median of one piece overlaps the transfer of the next (the default,
            2^18, is 1 MiB of float32 per rank and piece). It changes no result.
    """

    def __init__(
        self,
        process_group: Optional[dist.ProcessGroup] = None,
        groups: Optional[int] = None,
        nan: str = "propagate",
        check_iterations: int = 2,
        piece_shard: int = 1 << 18,
    ) -> None:
        self.omit_nan = _checks.nan_mode(nan, "MedianState")
        if groups is not None and (isinstance(groups, bool) or not isinstance(groups, int)):
            raise TypeError(f"cgh.MedianState: argument 'groups' must be None or an int, got {type(groups).__name__}")
        if groups is not None and groups < 1:
            raise ValueError(f"cgh.MedianState: argument 'groups' must be None or >= 1, got {groups}")
        if piece_shard < 1:
            raise ValueError(f"cgh.MedianState: argument 'piece_shard' must be >= 1, got {piece_shard}")
        if check_iterations < 0:
            raise ValueError(f"cgh.MedianState: argument 'check_iterations' must be >= 0, got {check_iterations}")
        self.process_group = process_group
        self.groups = groups
        self.nan = nan
        self.check_iterations = check_iterations
        self.piece_shard = piece_shard
        # Synchronizing backward passes seen so far (no_sync passes do not call the hook).
        self.iteration = 0
        # One flat scratch tensor per (dtype, device), reused by every bucket: the hook waits
        # for its collectives, so a bucket is done with it before the next one starts.
        # Fresh bucket-sized tensors would cost page faults on the CPU at every call.
        self._workspaces: dict[tuple[torch.dtype, torch.device], Tensor] = {}
        if dist.is_available() and dist.is_initialized():
            self.world_groups()  # fail early on a bad 'groups'

    def world_groups(self) -> tuple[int, int]:
        """(world size, number of groups) for the current process group."""
        world = dist.get_world_size(self.process_group)
        groups = world if self.groups is None else self.groups
        if groups > world:
            raise ValueError(f"cgh.MedianState: argument 'groups' must be in [1, world size = {world}], got {groups}")
        return world, groups

    def workspace(self, numel: int, like: Tensor) -> Tensor:
        """``numel`` scratch elements of ``like``'s dtype and device (grown to the largest bucket)."""
        key = (like.dtype, like.device)
        ws = self._workspaces.get(key)
        if ws is None or ws.numel() < numel:
            ws = self._workspaces[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
        return ws[:numel]


def _check_agreement(flat: Tensor, state: MedianState, groups: int, bucket_index: Optional[int]) -> None:
    """All ranks compare (numel, dtype, groups, nan); on a mismatch every rank raises,
    naming itself and a rank that differs.

    The exchange has a fixed size, so it completes even when the buckets differ, where the
    all-to-all of mismatched sizes would fail with an obscure transport error or hang.
    """
    group = state.process_group
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    mine = torch.tensor(
        [flat.numel(), _DTYPE_CODES.get(flat.dtype, -1), groups, int(state.omit_nan)],
        dtype=torch.int64,
        device=flat.device,
    )
    everyone = torch.empty(world * mine.numel(), dtype=torch.int64, device=flat.device)
    _all_gather(everyone, mine, group=group)
    rows = everyone.view(world, -1).tolist()

    def describe(r: int) -> str:
        numel, code, g, omit = rows[r]
        dtype = _checks.FLOAT_DTYPES[code] if 0 <= code < len(_checks.FLOAT_DTYPES) else "a non-float dtype"
        return f"rank {r} has {numel} elements of {dtype}, groups={g}, nan={'omit' if omit else 'propagate'!r}"

    for r in range(world):
        if rows[r] != rows[rank]:
            if bucket_index is None:
                where, hint = "cgh.all_reduce_median_: ranks disagree on argument 'tensor'", "the same tensor size"
            else:
                where = f"cgh.median_hook: ranks disagree on gradient bucket {bucket_index}"
                hint = "the same model and DDP settings"
            raise RuntimeError(
                f"{where}: {describe(rank)}, {describe(r)}. Every rank must use {hint}, "
                "the same dtype and the same MedianState(groups, nan)."
            )


def _pieces(n: int, world: int, piece_shard: int) -> list[tuple[int, int, int]]:
    """Cut ``n`` elements into pieces ``(start, length, shard)`` of ``world * shard`` slots each.

    Full pieces hold ``world * piece_shard`` elements; the last one holds the rest, padded
    to a multiple of ``world`` (fewer than ``world`` padding slots in all).
    """
    full = world * piece_shard
    pieces = [(start, full, piece_shard) for start in range(0, n - n % full, full)]
    rest = n % full
    if rest:
        pieces.append((n - rest, rest, -(-rest // world)))
    return pieces


def all_reduce_median_(
    tensor: Tensor, state: MedianState, *, check: bool = False, bucket_index: Optional[int] = None
) -> Tensor:
    """In place: ``tensor`` <- the coordinate-wise median of ``tensor`` over the ranks of ``state``.

    ``tensor`` is flat and contiguous (a DDP bucket), of the same size on every rank. Every
    rank ends with bitwise the same result: ``median_of_means(stack(ranks' tensors), groups)``.
    ``check=True`` first verifies that all ranks agree on size, dtype and settings
    (``bucket_index``: the DDP bucket being reduced, for the error message). Collective: every rank of the group must call it, in the same order.
    """
    if not isinstance(tensor, Tensor) or tensor.dim() != 1 or not tensor.is_contiguous():
        raise ValueError("cgh.all_reduce_median_: argument 'tensor' must be a flat, contiguous Tensor")
    world, groups = state.world_groups()
    if check and world > 1:
        _check_agreement(tensor, state, groups, bucket_index)
    n = tensor.numel()
    if world == 1 or n == 0:
        return tensor  # the median of one value is that value (NaN included, in both modes)
    group = state.process_group
    # Pipelined over pieces: every all-to-all is issued at once, and each piece is reduced
    # as soon as its own all-to-all has landed, then all-gathered, so the median of one
    # piece overlaps the transfers of the others. The collectives are issued in the same
    # order on every rank (all all-to-alls, then the all-gathers piece by piece), as gloo
    # and NCCL require. Each coordinate is reduced exactly as without pieces.
    pieces = _pieces(n, world, state.piece_shard)
    padded = sum(world * shard for _, _, shard in pieces)
    last_start, last_len, last_shard = pieces[-1]
    pad = world * last_shard if world * last_shard != last_len else 0
    # Workspace: [receive buffers | reduced shards | padded send buffer of the last piece].
    ws = state.workspace(padded + padded // world + pad, tensor)
    recv_all, reduced_all = ws[:padded], ws[padded : padded + padded // world]
    sends, recvs, reduceds = [], [], []
    offset = 0
    for start, length, shard in pieces:
        if world * shard == length:
            sends.append(tensor[start : start + length])  # already [world, shard]; no copy
        else:
            send = ws[padded + padded // world :]
            send[:length].copy_(tensor[start:])
            send[length:].zero_()  # the padding's median is computed and thrown away
            sends.append(send)
        recvs.append(recv_all[offset : offset + world * shard])
        reduceds.append(reduced_all[offset // world : offset // world + shard])
        offset += world * shard
    to_all = [dist.all_to_all_single(r, s, group=group, async_op=True) for r, s in zip(recvs, sends)]
    gathers = []
    for work, send, recv, reduced in zip(to_all, sends, recvs, reduceds):
        work.wait()
        median_of_means(recv.view(world, -1), groups, nan=state.nan, out=reduced)
        # This piece's send buffer is free again: gather the reduced shards into it (the
        # bucket itself, except for a padded last piece).
        gathers.append(_all_gather(send, reduced, group=group, async_op=True))
    for work in gathers:
        work.wait()
    if pad:
        tensor[last_start:].copy_(sends[-1][:last_len])
    return tensor


def median_hook(state: MedianState, bucket: dist.GradBucket) -> torch.futures.Future[Tensor]:
    """DDP communication hook: the bucket becomes the coordinate-wise median over the ranks.

    Register with ``ddp_model.register_comm_hook(MedianState(...), median_hook)``.

    The hook waits for its own collectives and returns a completed future. Chaining the
    all-gather onto the all-to-all's future instead would launch it from a completion
    callback, at a moment that differs between ranks; with several buckets in flight the
    ranks would then issue their collectives in different orders, which mismatches the
    collectives of gloo and NCCL alike. Issuing everything from the hook keeps one global
    order. On NCCL, ``wait()`` only makes the current CUDA stream wait (the CPU runs
    ahead), so the GPU still overlaps the exchange with the rest of the backward pass; the
    future carries the device so that DDP's consumers synchronize with that stream. On
    gloo the backward pass pauses while this bucket is exchanged.
    """
    flat = bucket.buffer()
    check = state.iteration < state.check_iterations
    if bucket.is_last():
        state.iteration += 1
    all_reduce_median_(flat, state, check=check, bucket_index=bucket.index())
    fut: torch.futures.Future[Tensor] = torch.futures.Future(
        devices=[flat.device] if flat.device.type == "cuda" else None
    )
    fut.set_result(flat)
    return fut


def install_median_hook(
    ddp_model: torch.nn.parallel.DistributedDataParallel,
    groups: Optional[int] = None,
    nan: str = "propagate",
    process_group: Optional[dist.ProcessGroup] = None,
) -> MedianState:
    """Replace ``ddp_model``'s mean all-reduce with :func:`median_hook`; returns the state.

    ``process_group=None`` uses the model's own process group. Call it before the first
    backward pass (DDP allows one hook per model).
    """
    if not isinstance(ddp_model, torch.nn.parallel.DistributedDataParallel):
        raise TypeError(
            "cgh.install_median_hook: argument 'ddp_model' must be a DistributedDataParallel, "
            f"got {type(ddp_model).__name__}"
        )
    if process_group is None:
        process_group = ddp_model.process_group
    state = MedianState(process_group=process_group, groups=groups, nan=nan)
    ddp_model.register_comm_hook(state, median_hook)
    return state
