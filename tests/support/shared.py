"""What all of a test session's processes (pytest-xdist runs two) can share: a server, a trained run, a model.
The first process to ask makes it, the others reuse it, and the last one done with it stops it (a server, by
PID). A Prefect server costs seconds of CPU to start and keeps a core busy now and then while it idles, a run
~10 s; on a 2-core machine the suite is CPU-bound, so each one made once is time saved. If a test process dies
without letting go, the session's end (`stop_leftovers`) stops what is left. A session killed outright (SIGKILL
to pytest itself, whose end then never runs) leaves its server running: its PID is in `prefect-server-*/server.pid`
under $MNIST_TESTS_SHARED."""

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock

# Made by the first process that loads this module (the xdist controller, or the only process): the workers it
# starts inherit the variable, so they all find the same folder.
if "MNIST_TESTS_SHARED" not in os.environ:
    os.environ["MNIST_TESTS_SHARED"] = tempfile.mkdtemp(prefix="mnist-tests-shared-")
SHARED_DIR = Path(os.environ["MNIST_TESTS_SHARED"])

Record = dict[str, Any]


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    with FileLock(SHARED_DIR / f"{name}.lock"):  # across processes: waits as long as another holds it
        yield


def _users_file(name: str) -> Path:
    return SHARED_DIR / f"{name}.json"


@contextlib.contextmanager
def shared(name: str, start: Callable[[Path], Record], stop: Callable[[Record], None]) -> Iterator[Record]:
    """The record of the one `name` of the session (what `start(folder)` returned, JSON: URLs, PIDs), started if
    no process holds it; stopped with `stop(record)` when the last process holding it lets go."""
    with _locked(name):
        users_file = _users_file(name)
        state = json.loads(users_file.read_text()) if users_file.exists() else None
        if state is None:  # a fresh folder each time: one stopped when a process let go may be asked for again
            state = {"record": start(Path(tempfile.mkdtemp(prefix=f"{name}-", dir=SHARED_DIR))), "users": 0}
        state["users"] += 1
        users_file.write_text(json.dumps(state))
    try:
        yield state["record"]
    finally:
        if SHARED_DIR.is_dir():  # else the session's end stopped everything already (an interrupted session)
            _let_go(name, stop)


def _let_go(name: str, stop: Callable[[Record], None]) -> None:
    with _locked(name):
        users_file = _users_file(name)
        state = json.loads(users_file.read_text())
        state["users"] -= 1
        if state["users"] == 0:
            users_file.unlink()
            stop(state["record"])
        else:
            users_file.write_text(json.dumps(state))


def stop_leftovers(stop_all: Callable[[], None]) -> None:
    """At the session's very end (the controller, once every test process is done): `stop_all` stops whatever a
    test process that died still held, then the shared folder (the servers' databases and logs) is removed."""
    stop_all()
    shutil.rmtree(SHARED_DIR, ignore_errors=True)
