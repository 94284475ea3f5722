"""Thin Prefect tasks around `mnist_core`, one module per stage (`tasks.train.train`, ...); beside them, the
sweep's trial starter (trials.py), a stop raised again at an epoch's end (stops.py) and when a failed task is
worth retrying (retries.py).

The package itself imports nothing: a flow imports each stage's module when it needs it, so a run that stops as
Unchanged after the fingerprint never imports the training, evaluation and export stacks (docs/performance.md,
"Seconds to a champion"). Not re-exported here on purpose: a lazy `tasks.train` would be the Task or the module
depending on which was imported first.
"""

# The stages of the `mnist` flow, in order (gather: only a run with corrections).
__all__ = ["gather", "download", "transform", "fingerprint", "train", "evaluate", "export", "promote"]
