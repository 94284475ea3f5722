"""What `python flows/mnist.py` needs around the flow: a Prefect API, and a terminal's signals turned into a
clean stop.

The API is PREFECT_API_URL when it is set (a server of the user's). Otherwise the run starts a server of its own,
as Prefect's temporary server would be (`prefect server start` on loopback, on PREFECT_HOME's database), but in
its own session. A terminal's Ctrl-C reaches the whole foreground process group: Prefect's temporary server, a
child in that group, died of it, so the run could no longer record how it ended and its client retried the dead
API for minutes. This server stays up until the run has ended, then is stopped by PID.

SIGINT raises KeyboardInterrupt and SIGTERM Prefect's TerminationSignal (as Prefect's engine does while a flow
runs), wherever the run is; a second signal stops at once. If the server exits while the run goes on, nothing can
be recorded any more: the run stops at once. Checkpoints are written atomically, so a stop at any moment leaves
the last one intact, and rerunning the same command resumes from it.
"""

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import NoReturn

from prefect.exceptions import TerminationSignal
from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

from deployments.server import serving

WATCH_INTERVAL_S = 0.5
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
RESUME_HINT = "the last checkpoint is intact: rerun the same command to resume from it"


def stop_now(message: str, code: int, server_pid: int | None) -> NoReturn:
    """Exit at once: nothing more can be recorded, and the checkpoint on disk is whole (written atomically)."""
    os.write(sys.stderr.fileno(), f"mnist: {message}\n".encode())  # not print(): Prefect captures it in a flow
    if server_pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server_pid, signal.SIGTERM)
    os._exit(code)


@contextlib.contextmanager
def signals_stop_the_run(server_pid: list[int]) -> Iterator[None]:
    """SIGINT and SIGTERM end the run through an exception (so Prefect records the run as crashed and everything
    is cleaned up); a second one, while that happens, exits at once."""
    received: list[signal.Signals] = []

    def handle(number: int, frame: FrameType | None) -> None:
        which = signal.Signals(number)
        if received:
            pid = server_pid[0] if server_pid else None
            stop_now(f"{which.name} again: stopping now; {RESUME_HINT}", EXIT_CODES[which], pid)
        received.append(which)
        if which == signal.SIGINT:
            raise KeyboardInterrupt
        raise TerminationSignal(number)

    previous = {which: signal.signal(which, handle) for which in EXIT_CODES}
    try:
        yield
    finally:
        for which, handler in previous.items():
            signal.signal(which, handler)


@contextlib.contextmanager
def watched(server: subprocess.Popen, log_path: Path) -> Iterator[None]:
    """Stop the run at once if the server exits before the run is over."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(WATCH_INTERVAL_S):
            if server.poll() is not None:
                stop_now(
                    f"error: the Prefect server of this run (PID {server.pid}) exited with status {server.returncode}; "
                    f"the run cannot record anything any more and stops here; {RESUME_HINT}. Server log: {log_path}",
                    1,
                    None,
                )

    watcher = threading.Thread(target=watch, name="mnist-server-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


@contextlib.contextmanager
def local_run() -> Iterator[str]:
    """The API for this command-line run, signals handled; yields the API URL."""
    server_pid: list[int] = []
    with signals_stop_the_run(server_pid):
        configured = PREFECT_API_URL.value()
        if configured:
            yield configured
            return
        home = Path(PREFECT_HOME.value()).expanduser()
        log_path = home / "logs" / "mnist-run-server.log"
        print("mnist: starting a Prefect server for this run (set PREFECT_API_URL to use your own)", flush=True)
        with serving(dict(os.environ), log_path, cwd=Path.cwd()) as (url, server):
            server_pid.append(server.pid)
            print(f"mnist: Prefect server of this run: {url.removesuffix('/api')} (log: {log_path})", flush=True)
            try:
                with watched(server, log_path), temporary_settings({PREFECT_API_URL: url}):
                    yield url
            finally:
                send_what_is_queued()


def send_what_is_queued() -> None:
    """Send the logs and events Prefect still queues, while the server is up: at exit, Prefect would retry
    sending them to a server that is gone, for a minute and more (as Prefect's own test harness does)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    EventsWorker.drain_all()
