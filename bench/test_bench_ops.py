"""pytest-benchmark cases for the hot ops: ``pytest bench/ --benchmark-only``.

Outside the default test run (``pytest tests/``). Each case times our op with a
preallocated output next to its fastest peers on the same inputs, at n = 2^20 float32
(in cache on most CPUs; ``python -m bench.throughput`` covers the DRAM-bound sizes).
"""

import warnings

import pytest
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    import cgh_ops  # noqa: F401

from bench import peers, throughput

N = 1 << 20
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = [
    ("median3", 3),
    ("median_of_means", 3),
    ("median_of_means", 9),
    ("foreach_median_of_means", 3),
    ("trimmed_mean", 5),
    ("running_median_", 3),
    ("ring_step_", 3),
]
CONTENDERS = ["ours", "torch.median", "foreach_minmax", "torch.compile"]


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("who", CONTENDERS)
@pytest.mark.parametrize("op,k", CASES, ids=[f"{op}-k{k}" for op, k in CASES])
def test_op(benchmark, op, k, who):
    prob = throughput.make_problem(op, N, k, torch.float32, DEVICE)
    out = None if throughput.in_place(op) else prob["out"]
    if who == "ours":
        fn = throughput.ours(op, prob["data"], out)
    else:
        fn = peers.peer(op, who, prob["data"], out) or peers.peer(op, who, prob["data"], None)
        if fn is None:
            pytest.skip(f"{who} does not compute {op}")
    fn()  # warm up (torch.compile compiles here)
    fn()
    benchmark.extra_info.update(bytes=prob["bytes"], n=N, k=k)

    def call():
        fn()
        _sync()

    benchmark(call)
