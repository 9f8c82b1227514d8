"""The paper's experiments as commands over a training loop.

* ``python -m cgh_ops.experiments.memorization``: label noise x methods x seeds; how much of
  the mislabeled training data each method memorizes, and what that costs on the test set.
* ``python -m cgh_ops.experiments.hardness``: the easy/hard protocol (a short SGD warm-up
  splits the training data by whether each example is then classified correctly) and the
  epoch at which easy and hard examples are first learned.

Both run many short trainings in one process on data held in memory (:mod:`.common`), so a
whole grid shares one data split, one noise recipe and one loop, and the differences between
methods are differences between methods. ``docs/RESULTS.md`` reports the full runs.
"""
