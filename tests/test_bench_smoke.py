"""Smoke test of ``python -m bench.throughput``: a tiny run, its JSON records, and that every
peer computes the statistic it is compared against (no timing assertions)."""

import copy
import json
import warnings

import pytest
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    import cgh_ops  # noqa: F401

from bench import peers, throughput

FIELDS = ("op", "backend", "variant", "n", "k", "dtype", "seconds", "gbps", "frac_of_copy", "bytes", "repeats")
FAST_PEERS = [p for p in peers.PEERS if p != "torch.compile"]  # compiling takes seconds per graph


def test_tiny_run_writes_records(tmp_path, capsys):
    path = tmp_path / "bench.json"
    argv = ["--sizes", "8", "--ks", "3", "5", "--dtypes", "float32", "bfloat16", "--peers", ",".join(FAST_PEERS),
            "--no-optimizer-step", "--warmup", "1", "--min-repeats", "1", "--max-repeats", "2", "--budget", "0",
            "--json", str(path)]
    throughput.main(argv)
    records = json.loads(path.read_text())
    assert records
    for r in records:
        for f in FIELDS:
            assert f in r, (f, r)
        assert r["gbps"] > 0 and r["seconds"] > 0 and r["frac_of_copy"] > 0
    seen = {(r["op"], r["backend"]) for r in records}
    for op in throughput.OPS:  # every op ran on our CPU backend and against at least one peer
        assert (op, "cpu") in seen
        assert any(o == op and b in FAST_PEERS for o, b in seen), op
    assert {r["variant"] for r in records if r["op"] == "median3" and r["backend"] == "cpu"} == {"out", "fresh"}
    assert "median3" in capsys.readouterr().out  # the table


def _outputs(op, data, result, out):
    """What an op produced: its return value / out tensors, or the mutated inputs."""
    if op == "running_median_":
        return [data["grad"], *data["history"]]
    if op == "ring_step_":
        return [*data["params"], *data["history"]]
    got = out if out is not None else result
    return list(got) if isinstance(got, (list, tuple)) else [got]


CASES = [(op, k) for op in throughput.OPS for k in ([3] if op == "median3" else [3, 5, 9])]


@pytest.mark.parametrize("op,k", CASES)
def test_peers_compute_the_same_statistic(op, k):
    """Each peer (fresh and out=) against our op, on the same inputs (ties to the reference semantics)."""
    prob = throughput.make_problem(op, 257, k, torch.float32, torch.device("cpu"))
    if op == "ring_step_":
        prob["data"].update(lr=0.5, wd=0.25)  # large enough that a wrong update shows
    expected_data = copy.deepcopy(prob["data"])
    expected = _outputs(op, expected_data, throughput.ours(op, expected_data, None)(), None)
    for name in FAST_PEERS:
        for out in (None, prob["out"]):
            if throughput.in_place(op) and out is not None:
                continue
            data, out = copy.deepcopy(prob["data"]), copy.deepcopy(out)
            fn = peers.peer(op, name, data, out)
            if fn is None:
                continue
            got = _outputs(op, data, fn(), out)
            for g, e in zip(got, expected):
                torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6, msg=f"{name} {op} k={k} out={out is not None}")


@pytest.mark.slow
def test_compiled_running_median_writes_the_raw_gradient():
    """The torch.compile peer of running_median_ works around an Inductor miscompile (see peers.py)."""
    prob = throughput.make_problem("running_median_", 64, 3, torch.float32, torch.device("cpu"))
    data = prob["data"]
    raw = data["grad"].clone()
    expected = torch.median(torch.stack([data["grad"], *data["history"]]), 0).values
    peers.peer("running_median_", "torch.compile", data, None)()
    torch.testing.assert_close(data["history"][0], raw, rtol=0, atol=0)
    torch.testing.assert_close(data["grad"], expected, rtol=0, atol=0)
