"""Thin Prefect tasks around `mnist_core`, one per stage; beside them, the sweep's trial starter (trials.py) and a
stop raised again at an epoch's end (stops.py).

Each stage's module is imported when first asked for (`from tasks import train` works as before): a run that stops
as Unchanged after the fingerprint never imports the training, evaluation and export stacks (docs/performance.md,
"Seconds to a champion")."""

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["gather", "download", "transform", "fingerprint", "train", "evaluate", "export", "promote"]
_MODULES = {"gather": "tasks.corrections", **{name: f"tasks.{name}" for name in __all__ if name != "gather"}}

if TYPE_CHECKING:
    from tasks.corrections import gather
    from tasks.download import download
    from tasks.evaluate import evaluate
    from tasks.export import export
    from tasks.fingerprint import fingerprint
    from tasks.promote import promote
    from tasks.train import train
    from tasks.transform import transform


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module 'tasks' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULES[name]), name)
    # As the eager imports did: the task, not its module (which importing it just bound to the same name), is
    # `tasks.<name>` from now on.
    globals()[name] = value
    return value
