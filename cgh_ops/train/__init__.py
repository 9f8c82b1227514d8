"""The thin training loop of cgh_ops (``python -m cgh_ops.train``) and its Python API.

    from cgh_ops.train import Config, run, run_comparison, load_summaries
    summary = run(Config(method="m3", corrupt_fraction=0.5, out="runs/m3"))
    summaries = run_comparison(Config(corrupt_fraction=0.5, out="runs/cmp"), ["sgd", "m3"])
    rows = load_summaries("runs")  # every summary.json below a folder

``run`` returns the dict it writes to ``<out>/summary.json``: ``method``,
``corrupt_fraction``, ``seed``, ``final`` (the last epoch's ``pristine_acc``,
``corrupt_acc``, ``test_acc``, losses ...), the resolved ``config`` and more.
"""

from .config import Config, ConfigError, resolve
from .loop import run, run_comparison
from .report import load_summaries

__all__ = ["Config", "ConfigError", "resolve", "run", "run_comparison", "load_summaries"]
