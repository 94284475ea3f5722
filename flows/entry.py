"""Imported first by the command-line scripts (`python flows/mnist.py`, `sweep.py`, `predict.py`). Their imports
take seconds (torch, Prefect); a Ctrl-C in that time printed a KeyboardInterrupt traceback. When one of them is
the program being run, Ctrl-C exits quietly with status 130 until the run's own handling (flows/local.py) takes
over. Imported by anything else (tests, a worker loading a deployment's flow), it changes nothing."""

import os
import signal
import sys
from pathlib import Path
from types import FrameType

FLOWS = Path(__file__).resolve().parent


def _interrupted(signum: int, frame: FrameType | None) -> None:
    # os._exit, not SystemExit: raised at an arbitrary point of an import, an exception can be swallowed by a
    # library's broad `except` (seen: the run went on). Nothing has started yet that would need cleaning up.
    sys.stderr.write(f"{Path(sys.argv[0]).stem}: interrupted (Ctrl-C) before the run started\n")
    sys.stderr.flush()
    os._exit(130)


def hand_over() -> None:
    """Called when the run's own signal handling starts: from then on, and after it, Ctrl-C is Python's again."""
    if signal.getsignal(signal.SIGINT) is _interrupted:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _is_a_script_here() -> bool:
    program = getattr(sys.modules.get("__main__"), "__file__", None)
    return program is not None and Path(program).resolve().parent == FLOWS


# Not when the caller ignores SIGINT (a background job of a non-interactive shell): that choice is kept.
if _is_a_script_here() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupted)
