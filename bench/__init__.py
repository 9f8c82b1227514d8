"""Benchmarks of the cgh ops against their peers.

* ``python -m bench.throughput``: every op x backend x peer, GB/s against a same-run copy;
* ``bench/optimizer_step.py``: a full optimizer step over ResNet-50's parameter list;
* ``bench/report.py``: the JSON of a run -> ``bench/RESULTS.md`` tables and PNG plots;
* ``pytest bench/ --benchmark-only``: pytest-benchmark cases for the hot ops.
"""
