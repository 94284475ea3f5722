"""A stop (Ctrl-C, SIGTERM) that a command-line run received but that did not stop it, raised again by the train
task at an epoch's end.

The command line's signal handler (launch/local.py) raises the interrupt wherever the main thread is. Where that
is inside a library that catches and drops it (seen once in CI: a Ctrl-C sent the moment epoch 1's checkpoint
appeared, while the epoch was logged and published to the API, and the run trained on to the end), the train task
raises it again one epoch later, as it would have stopped. The command line says here what it received; on a
worker, in a test or in a library nothing is listening and nothing is raised.
"""

from collections.abc import Callable

_lost_stop: Callable[[], BaseException | None] | None = None


def listen(lost_stop: Callable[[], BaseException | None] | None) -> None:
    """`lost_stop()` returns the interrupt to raise again, or None; None stops listening."""
    global _lost_stop
    _lost_stop = lost_stop


def raise_a_lost_stop() -> None:
    """Raise again a stop that was received but did not stop the run; a no-op when none was or nobody listens."""
    stop = _lost_stop() if _lost_stop is not None else None
    if stop is not None:
        raise stop
