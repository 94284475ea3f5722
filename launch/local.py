"""What `python flows/mnist.py` needs around the flow: a Prefect API, and a terminal's signals turned into a
clean stop.

The API is PREFECT_API_URL when it is set (a server of the user's), else the server of this checkout's stack when it
runs (`mnist stack up`: one UI for every run). Otherwise the run starts a server of its own,
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
import importlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import NoReturn, TypeVar

from prefect.exceptions import TerminationSignal
from prefect.settings import PREFECT_API_URL, PREFECT_HOME, PREFECT_UI_URL, temporary_settings

from launch.entry import hand_over
from launch.server import ServerError, serving
from launch.stack import running_api_url
from mnist_core.errors import PipelineError, disguised_interrupt
from tasks import stops

T = TypeVar("T")

WATCH_INTERVAL_S = 0.5
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
# Not "the checkpoint is intact": a run stopped before its first epoch ended has none (it then starts afresh).
RESUME_HINT = "rerun the same command to resume from the last completed epoch, if any (checkpoints are written whole)"
# Prefect's temporary server runs only what one run needs; a standing server's services (scheduling deployments'
# runs, marking late runs, watching workers, ...) would act on PREFECT_HOME's database for nothing. The user's own
# settings win.
STANDING_SERVER_SERVICES = (
    "scheduler",
    "late_runs",
    "foreman",
    "cancellation_cleanup",
    "pause_expirations",
    "repossessor",
    "cleanup_reconciler",
)


class LocalRun:
    """A command-line run: its server (if it started one), the signals received, whether the flow has returned.
    The signal handlers and the server's watchdog decide from this how to stop."""

    def __init__(self) -> None:
        self.server: subprocess.Popen | None = None
        self.signals: list[signal.Signals] = []
        self.completed = False

    def finish(self) -> None:
        """The flow has returned: from here on, a signal only cuts the clean-up short, and the exit status is 0."""
        self.completed = True

    def stop_now(self, message: str, code: int) -> NoReturn:
        """Exit at once: nothing more can be recorded, and the checkpoint on disk is whole (written atomically)."""
        os.write(sys.stderr.fileno(), f"mnist: {message}\n".encode())  # not print(): Prefect captures it in a flow
        if self.server is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.server.pid, signal.SIGTERM)
        os._exit(code)

    def handle(self, number: int, frame: FrameType | None) -> None:
        """SIGINT and SIGTERM end the run through an exception, so Prefect records it as crashed and everything
        is cleaned up; a second signal, while that happens, exits at once.

        While a flow runs, Prefect's engine has its own SIGTERM handler (it raises TerminationSignal too); once it
        has recorded the run, it passes the signal on here, with its TerminationSignal still propagating: that is
        the first signal, not a second. A second SIGTERM that reaches Prefect's handler is Prefect's to handle."""
        which = signal.Signals(number)
        if self.completed:
            self.stop_now(f"{which.name}: the run had completed; its Prefect server is being stopped", 0)
        handling = sys.exc_info()[1]
        if not self.signals and which == signal.SIGTERM and isinstance(handling, TerminationSignal):
            self.signals.append(which)
            return
        if self.signals or isinstance(handling, (KeyboardInterrupt, TerminationSignal)):
            first = self.signals[0] if self.signals else signal.SIGTERM
            if not self.signals and isinstance(handling, KeyboardInterrupt):
                first = signal.SIGINT
            self.stop_now(f"{which.name} again: stopping now; {RESUME_HINT}", EXIT_CODES[first])
        self.signals.append(which)
        raise _interrupt(which)

    def lost_stop(self) -> BaseException | None:
        """The stop to raise again at an epoch's end (tasks/stops.py): one was received, yet the run goes on."""
        return _interrupt(self.signals[0]) if self.signals and not self.completed else None

    def server_exited(self, log_path: Path) -> None:
        """The watchdog's verdict when the server has exited while the run goes on."""
        if self.completed:
            return
        assert self.server is not None
        if self.signals:  # the same signal reached the server (a service manager stops the whole cgroup)
            which = self.signals[0]
            self.stop_now(
                f"{which.name}: stopping now (the Prefect server stopped too); {RESUME_HINT}", EXIT_CODES[which]
            )
        self.stop_now(
            f"error: the Prefect server of this run (PID {self.server.pid}) exited with status "
            f"{self.server.returncode}; the run cannot record anything any more and stops here; {RESUME_HINT}. "
            f"Server log: {log_path}",
            1,
        )


@contextlib.contextmanager
def signals_handled(run: LocalRun) -> Iterator[None]:
    previous = {which: signal.signal(which, run.handle) for which in EXIT_CODES}
    stops.listen(run.lost_stop)
    try:
        yield
    finally:
        stops.listen(None)
        for which, handler in previous.items():
            signal.signal(which, handler)


def _interrupt(which: signal.Signals) -> BaseException:
    """What a stop raises: KeyboardInterrupt for SIGINT, Prefect's TerminationSignal for SIGTERM (as its engine)."""
    return KeyboardInterrupt() if which == signal.SIGINT else TerminationSignal(which)


@contextlib.contextmanager
def watched(run: LocalRun, log_path: Path) -> Iterator[None]:
    """Stop the run at once if its server exits before the run is over."""
    assert run.server is not None
    server, done = run.server, threading.Event()

    def watch() -> None:
        while not done.wait(WATCH_INTERVAL_S):
            if server.poll() is not None:
                run.server_exited(log_path)
                return

    watcher = threading.Thread(target=watch, name="mnist-server-watch", daemon=True)
    try:
        watcher.start()
        yield
    finally:
        done.set()
        if watcher.is_alive():
            watcher.join()


def _import_for_training() -> None:
    """What training's first optimizer would import: torch.optim's constructor pulls in torch._dynamo. Done while
    this run's server starts (~7 s), it costs no time; done by the train task, it took 1.0 s of its 1.7 s (2-core
    CPU, `--epochs 1`, three runs each way)."""
    importlib.import_module("torch._dynamo")


@contextlib.contextmanager
def local_run() -> Iterator[LocalRun]:
    """The API for this command-line run (PREFECT_API_URL, or a server of its own), signals handled."""
    run = LocalRun()
    hand_over()  # the quiet exit of the imports' seconds (launch/entry.py) ends here
    with signals_handled(run):
        configured = PREFECT_API_URL.value()
        if configured:
            yield run
            return
        stack_url = running_api_url()
        if stack_url:
            print(f"mnist: reporting to the local stack's Prefect server, {stack_url.removesuffix('/api')} "
                  "(set PREFECT_API_URL to use another)", flush=True)  # fmt: skip
            with temporary_settings({PREFECT_API_URL: stack_url}):
                yield run
            return
        home = Path(PREFECT_HOME.value()).expanduser()
        log_path = home / "logs" / "mnist-run-server.log"
        env = {
            **{f"PREFECT_SERVER_SERVICES_{name.upper()}_ENABLED": "false" for name in STANDING_SERVER_SERVICES},
            **os.environ,
        }
        print("mnist: starting a Prefect server for this run (set PREFECT_API_URL to use your own)", flush=True)
        with serving(env, log_path, cwd=Path.cwd(), meanwhile=_import_for_training) as (url, server):
            run.server = server
            print(f"mnist: Prefect server of this run: {url.removesuffix('/api')} (log: {log_path})", flush=True)
            # No "View at <this server>/runs/..." line from Prefect: the server stops when the run ends, and the
            # link would lead nowhere. Where to see the run afterwards is printed below.
            with watched(run, log_path), temporary_settings({PREFECT_API_URL: url, PREFECT_UI_URL: ""}):
                yield run
        print(
            f"mnist: the run's Prefect server has stopped; the run stays recorded in {home / 'prefect.db'}: "
            "`prefect server start` shows it at http://127.0.0.1:4200/runs",
            flush=True,
        )


def run_from_command_line(
    program: str, call: Callable[[], T], hint: str = "", report: Callable[[T], None] | None = None
) -> tuple[T | None, int]:
    """`call` (a flow) under `local_run`: (its result, 0), or (None, the exit status) after a one-line message for
    an error of the environment or the data (1), Ctrl-C (130) or SIGTERM (143); `hint` follows a stop's message.
    `report` prints the result while the run's signal handling still holds: a Ctrl-C after it only cuts the
    server's clean-up short."""
    try:
        with local_run() as run:
            result = call()
            run.finish()
            if report is not None:
                report(result)
    except (PipelineError, OSError, ServerError) as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        return None, 1
    except BaseException as error:
        interrupt = error if not isinstance(error, Exception) else disguised_interrupt(error)
        if not isinstance(interrupt, KeyboardInterrupt | TerminationSignal):
            raise
        ctrl_c = isinstance(interrupt, KeyboardInterrupt)
        stopped = "interrupted (Ctrl-C)" if ctrl_c else "terminated (SIGTERM)"
        print(f"{program}: {stopped}{'; ' + hint if hint else ''}", file=sys.stderr)
        return None, 130 if ctrl_c else 143
    return result, 0
