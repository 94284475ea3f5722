"""The first seconds of a command: its imports (torch, Prefect) take seconds, and a Ctrl-C in that time printed a
KeyboardInterrupt traceback. `quiet_interrupts` makes Ctrl-C exit quietly with status 130 until the run's own
handling (launch/local.py) takes over with `hand_over`. Only a command line calls it: a test or a worker that
imports a flow keeps Python's own handling."""

import os
import signal
import sys
from types import FrameType

_program = "mnist"


def _interrupted(signum: int, frame: FrameType | None) -> None:
    # os._exit, not SystemExit: raised at an arbitrary point of an import, an exception can be swallowed by a
    # library's broad `except` (seen: the run went on). Nothing has started yet that would need cleaning up.
    sys.stderr.write(f"{_program}: interrupted (Ctrl-C) before the run started\n")
    sys.stderr.flush()
    os._exit(130)


def quiet_interrupts(program: str) -> None:
    """Ctrl-C exits quietly (130) until `hand_over`. Not when the caller ignores SIGINT (a background job of a
    non-interactive shell): that choice is kept."""
    global _program
    _program = program
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupted)


def telemetry_off() -> None:
    """Prefect's client telemetry off unless the user turned analytics on: on import, on a terminal, Prefect prints
    a first-run notice and queues a usage event, which an offline machine then tries to send (the servers this
    project starts have analytics off as well: launch/server.py). PREFECT_SERVER_ANALYTICS_ENABLED=true, or
    DO_NOT_TRACK set by the user, wins. Call it before Prefect is imported."""
    if os.environ.get("PREFECT_SERVER_ANALYTICS_ENABLED", "").lower() not in ("1", "true"):
        os.environ.setdefault("DO_NOT_TRACK", "1")


def hand_over() -> None:
    """Called when the run's own signal handling starts: from then on, and after it, Ctrl-C is Python's again."""
    if signal.getsignal(signal.SIGINT) is _interrupted:
        signal.signal(signal.SIGINT, signal.default_int_handler)
