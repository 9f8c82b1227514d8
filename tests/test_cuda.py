"""GPU-only tests of the CUDA C++ and Triton kernels (skipped without a CUDA device).

Both CUDA backends against the reference (on CPU tensors: bitwise, since all follow the same rounding
rules; the reference on CUDA tensors would divide by a row count through a reciprocal) and against the native CPU kernels where those are built, run-to-run determinism,
an input of more than 2^31 elements, and non-default streams.
"""

import warnings

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    import cgh_ops
    from cgh_ops import _extension, reference

HAS_CUDA_KERNELS = torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
    "cgh::median3", "CUDA"
)
HAS_CPU_KERNELS = torch._C._dispatch_has_kernel_for_dispatch_key("cgh::median3", "CPU")
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


@pytest.fixture(params=["cuda", "triton"])
def cuda_backend(request):
    if request.param == "cuda" and not HAS_CUDA_KERNELS:
        pytest.skip("cgh_ops._C has no CUDA kernels")
    if request.param == "triton":
        pytest.importorskip("triton")
    cgh_ops.set_cuda_backend(request.param)
    yield request.param
    cgh_ops.set_cuda_backend("cuda")


def same(a, b):
    a, b = a.cpu(), b.cpu()
    nan = torch.isnan(a) & torch.isnan(b)
    return torch.equal(torch.where(nan, 0, a), torch.where(nan, 0, b))


def rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(*shape, generator=g, device="cuda", dtype=torch.float32).to(dtype)


def specials(x):
    x = x.clone()
    f = x.view(x.shape[0], -1)
    f[0, 0], f[1, 1], f[0, 2] = float("nan"), float("inf"), float("-inf")
    f[:, 3] = float("nan")
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "m, groups", [(3, 3), (7, 3), (4, 2), (40, 3), (40, 40)], ids=["k3", "uneven", "even", "streaming", "aten-k40"]
)
@pytest.mark.parametrize("nan", ["propagate", "omit"])
def test_median_of_means(cuda_backend, dtype, m, groups, nan):
    if cuda_backend == "triton" and m == 40:
        pytest.skip("Triton unrolls the rows: sized for the optimizers' few rows")
    x = specials(rand(m, 33, 129, dtype=dtype))  # 129: a vector tail on every row
    got = cgh_ops.median_of_means(x, groups, nan=nan)
    assert same(got, reference.median_of_means(x.cpu(), groups, nan == "omit"))
    out = torch.empty(129, 66, device="cuda", dtype=dtype).t()[::2]  # strided out=
    cgh_ops.median_of_means(x, groups, nan=nan, out=out)
    assert same(out, got)


@pytest.mark.parametrize("dtype", DTYPES)
def test_median3_matches_torch_median(cuda_backend, dtype):
    a, b, c = specials(rand(3, 1000, 7, dtype=dtype))
    got = cgh_ops.median3(a, b, c)
    assert same(got, torch.median(torch.stack([a, b, c]), 0).values)
    assert same(cgh_ops.median3(a.t(), b.t(), c.t()), got.t())  # strided inputs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m, trim", [(5, 1), (8, 3), (33, 5)], ids=["m5", "even-m", "aten-m33"])
def test_trimmed_and_winsorized(cuda_backend, dtype, m, trim):
    x = specials(rand(m, 257, dtype=dtype))
    assert same(cgh_ops.trimmed_mean(x, trim), reference.trimmed_mean(x.cpu(), trim))
    assert same(cgh_ops.winsorized_mean(x, trim), reference.winsorized_mean(x.cpu(), trim))


def test_foreach_one_list_many_shapes(cuda_backend):
    xs = [rand(3, 1000, seed=1), rand(3, 3, 5, seed=2), rand(5, 70, seed=3), rand(3, 1, seed=4)[:, :0]]
    for got, exp in zip(cgh_ops.foreach_median_of_means(xs, 3), reference.foreach_median_of_means([t.cpu() for t in xs], 3)):
        assert same(got, exp)


@pytest.mark.parametrize("reduce, slot, wd", [("median", 1, 0.01), ("mean", 0, 0.0), ("none", 2, 0.1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_ring_step_and_running_median(cuda_backend, reduce, slot, wd, dtype):
    # 60 parameters: more than one ListMeta (48 tensors) per launch.
    params = [rand(17 + i, dtype=dtype, seed=i) for i in range(60)]
    grads = [rand(*p.shape, dtype=dtype, seed=100 + i) for i, p in enumerate(params)]
    hist = [rand(*p.shape, dtype=dtype, seed=200 + 3 * i + j) for i, p in enumerate(params) for j in range(3)]
    p_ref, h_ref = [p.cpu() for p in params], [h.cpu() for h in hist]
    fn = cgh_ops.ops._kernel("ring_step_", "default", params[0].device)
    fn(params, grads, hist, slot, 0.1, wd, reduce, False)
    reference.ring_step_(p_ref, [t.cpu() for t in grads], h_ref, slot, 0.1, wd, reduce, False)
    assert all(same(a, b) for a, b in zip(params + hist, p_ref + h_ref))
    g, g_ref = [t.clone() for t in grads], [t.cpu() for t in grads]
    h2, h2_ref = [t.clone() for t in hist], [t.cpu() for t in hist]
    cgh_ops.foreach_running_median_(g, h2, slot)
    reference.foreach_running_median_(g_ref, h2_ref, slot)
    assert all(same(a, b) for a, b in zip(g + h2, g_ref + h2_ref))


def test_bitwise_deterministic(cuda_backend):
    x = rand(7, 1 << 20, dtype=torch.bfloat16)
    first = cgh_ops.median_of_means(x, 3)
    for _ in range(3):
        assert torch.equal(cgh_ops.median_of_means(x, 3), first)


@pytest.mark.skipif(not HAS_CPU_KERNELS, reason="no native CPU kernels to compare with")
@pytest.mark.parametrize("dtype", DTYPES)
def test_equal_to_cpu_kernels(cuda_backend, dtype):
    x = specials(rand(6, 4097, dtype=dtype))
    assert same(cgh_ops.median_of_means(x, 3), cgh_ops.median_of_means(x.cpu(), 3))
    assert same(cgh_ops.median3(x[0], x[1], x[2]), cgh_ops.median3(x[0].cpu(), x[1].cpu(), x[2].cpu()))
    assert same(cgh_ops.trimmed_mean(x, 2), cgh_ops.trimmed_mean(x.cpu(), 2))


def test_non_default_stream(cuda_backend):
    # The kernels launch on the current stream: work queued on a side stream stays ordered.
    s = torch.cuda.Stream()
    x = rand(3, 1 << 22)
    expected = reference.median_of_means(x.cpu(), 3)
    with torch.cuda.stream(s):
        y = x * 1.0  # queued on s before the op reads it
        got = cgh_ops.median_of_means(y, 3)
    s.synchronize()
    assert same(got, expected)


def test_more_than_2_31_elements(cuda_backend):
    # 3 x 2^31 + 5 bf16 values (12 GiB): offsets past 2^31 in each row.
    free, _ = torch.cuda.mem_get_info()
    n = (1 << 31) + 5
    if free < 3 * n * 2 * 1.5:
        pytest.skip("not enough GPU memory for a > 2^31-element row")
    x = torch.empty(3, n, device="cuda", dtype=torch.bfloat16)
    x[0].fill_(1.0)
    x[1].fill_(3.0)
    x[2].fill_(2.0)
    x[:, -1] = torch.tensor([5.0, -1.0, 7.0], device="cuda", dtype=torch.bfloat16)
    got = cgh_ops.median_of_means(x, 3)
    assert got[0].item() == 2.0 and got[(1 << 31) + 1].item() == 2.0 and got[-1].item() == 5.0
    del x, got


def test_compiles_with_torch_compile(cuda_backend):
    # The Triton ops are transparent to Inductor; the CUDA ops are opaque calls: both trace.
    x = rand(3, 4096)

    @torch.compile(fullgraph=True)
    def f(x):
        return cgh_ops.median_of_means(x * 2, 3)

    assert same(f(x), reference.median_of_means((x * 2).cpu(), 3))
