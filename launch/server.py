"""The one way this project starts a Prefect server: `prefect server start` on loopback (by default) in a new
session, waited on through Prefect's client, stopped by PID. Used by the stack (launch/stack.py), the
benchmark and the tests. Importing this module starts nothing.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil
import tenacity

T = TypeVar("T")

HEALTH_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0


class ServerError(RuntimeError):
    """A Prefect server (or worker) did not become healthy, or exited."""


def prefect_command() -> list[str]:
    """The `prefect` beside this Python, else `python -m prefect`: servers and workers run with the very Prefect this
    process imports, never another one found on PATH (or none: Prefect installed with `pip --target` has no
    `prefect` on PATH, which used to fail as "No such file or directory: 'prefect'")."""
    candidate = Path(sys.executable).parent / "prefect"
    return [str(candidate)] if candidate.exists() else [sys.executable, "-m", "prefect"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on (just released: free until someone binds it)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def api_url(host: str, port: int) -> str:
    client_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{client_host}:{port}/api"


def start_prefect(
    args: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None, outlive_caller: bool = True
) -> subprocess.Popen:
    """`prefect <args>` in a new session, its output appended to `log_path`.

    A new session: the process leads its own group, ignores the caller's terminal signals, and one SIGTERM to the
    group (`stop_group`) stops it and whatever it started (a worker's flow-run processes). Unless it is to
    `outlive_caller` (the stack's server and worker), it is stopped when the caller dies, however it dies: it runs
    under launch/lifeline.py, holding the read end of a pipe whose write end only this process has."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command, lifeline = [*prefect_command(), *args], None
    if not outlive_caller:
        lifeline, keep = os.pipe()  # both non-inheritable: no other child of ours holds the write end open
        command = [sys.executable, "-m", "launch.lifeline", str(lifeline), *args]

    def prepare_child() -> None:
        # SIGINT back to its default: a caller that ignores it (a background job of a script, nohup, a CI runner)
        # passes that on, and a Prefect worker stops on SIGTERM by sending itself SIGINT; ignored, the worker
        # never stopped and was SIGKILLed after STOP_TIMEOUT_S (seen under pytest-xdist, whose workers ignore it).
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    try:
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=() if lifeline is None else (lifeline,),
                preexec_fn=prepare_child,  # noqa: PLW1509 - a signal reset only
            )
    except BaseException:
        if lifeline is not None:
            os.close(keep)
        raise
    finally:
        if lifeline is not None:
            os.close(lifeline)
    if lifeline is not None:
        # Open as long as this process lives (closed by the kernel when it dies); a stopped server has no use for it.
        weakref.finalize(process, os.close, keep)
    return process


def start_server(
    host: str, port: int, env: dict[str, str], log_path: Path, cwd: Path, outlive_caller: bool = True
) -> subprocess.Popen:
    """A Prefect server on `host:port`; its database is the one `env` configures (SQLite in PREFECT_HOME unless
    PREFECT_API_DATABASE_CONNECTION_URL is set). It reads `.env` and `prefect.toml` in `cwd`. Analytics are off
    unless `env` turns them on: offline, the server keeps trying to phone home and logs an ERROR each time.
    The UI calls this server's API: Prefect's UI otherwise calls port 4200 whatever `--port` says, and every page
    of a server on another port shows "Can't connect to Server API"."""
    defaults = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_API_URL": api_url(host, port)}
    return start_prefect(
        ["server", "start", "--host", host, "--port", str(port)],
        {**defaults, **env},  # unless the user set them
        log_path,
        cwd=cwd,
        outlive_caller=outlive_caller,
    )


def server_healthy(url: str, timeout_s: float = 5.0) -> bool:
    """The server at `url` answers its health check now: one try (the caller polls), through Prefect's client."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    # Without this, a server that is up but slow to answer is retried with back-off for a minute and more.
    no_retries = temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0})
    with no_retries, SyncPrefectClient(url, httpx_settings={"timeout": timeout_s}) as client:
        return client.api_healthcheck() is None


def log_tail(log_path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_for(
    what: str,
    check: Callable[[], bool],
    running: Callable[[], bool],
    log_path: Path,
    timeout_s: float = HEALTH_TIMEOUT_S,
) -> None:
    """Poll `check` until it holds; ServerError (with the log's tail) if the process exits or time runs out."""

    def healthy() -> bool:
        if check():
            return True
        if not running():
            raise ServerError(f"the {what} exited; last lines of its log ({log_path}):\n{log_tail(log_path)}")
        return False

    try:
        poll(healthy, timeout_s, interval_s=0.25)
    except tenacity.RetryError:
        raise ServerError(
            f"the {what} was not healthy after {timeout_s:.0f} s; log ({log_path}):\n{log_tail(log_path)}"
        ) from None


def poll(check: Callable[[], T], timeout_s: float, interval_s: float) -> T:
    """Call `check` every `interval_s` until it returns something true, and return that; tenacity.RetryError after
    `timeout_s`. An exception from `check` ends the wait at once. The one polling loop of the project (the tests'
    and the benchmarks' waits call it too)."""
    return tenacity.Retrying(
        stop=tenacity.stop_after_delay(timeout_s),
        wait=tenacity.wait_fixed(interval_s),
        retry=tenacity.retry_if_result(lambda result: not result),
    )(check)


def group_members(pgid: int) -> list[psutil.Process]:
    """The processes of the group `pgid` (a server and what it started, also once the leader has exited)."""
    members = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process)
    return members


def group_alive(pgid: int) -> bool:
    """Some process of the group `pgid` still runs."""
    return bool(group_members(pgid))


def stop_group(pid: int, alive: Callable[[], bool], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM to the process group `pid` leads, SIGKILL to what of it is left after `timeout_s` if it is still
    `alive` (the caller's check that the PID is still the process it started)."""
    members = group_members(pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    left = still_running(members, timeout_s)
    if left and alive():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        still_running(left, STOP_TIMEOUT_S)


def still_running(processes: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Those of `processes` still running after up to `timeout_s` (not our children only: a group's grandchildren
    too). A zombie has exited: whoever reaps it (PID 1 for one whose parent is gone, which here took 1-2 s after
    the exit) is no reason to wait."""
    deadline = time.monotonic() + timeout_s
    while (left := [process for process in processes if _running(process)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@contextlib.contextmanager
def serving(
    env: dict[str, str], log_path: Path, cwd: Path, meanwhile: Callable[[], object] | None = None
) -> Iterator[tuple[str, subprocess.Popen]]:
    """A server on a free loopback port, run with `env` in `cwd`, once healthy: yields its API URL and process. On
    exit, this process's queued logs and events are sent to it, then its whole group is stopped (by PID), the
    server's own children too, even once the server itself has exited. If this process dies without stopping it
    (SIGKILL), its lifeline stops it (launch/lifeline.py). `meanwhile` runs while the server starts (which takes
    seconds), before waiting."""
    port = free_port()
    server = start_server("127.0.0.1", port, env, log_path, cwd=cwd, outlive_caller=False)
    try:
        if meanwhile is not None:
            meanwhile()
        url = api_url("127.0.0.1", port)
        wait_for("Prefect server", lambda: server_healthy(url), lambda: server.poll() is None, log_path)
        try:
            yield url, server
        finally:
            if server.poll() is None:
                send_what_is_queued()
    finally:
        stop_group(server.pid, lambda: server.poll() is None or group_alive(server.pid))
        server.wait()


def send_what_is_queued() -> None:
    """Send the logs and events this process's Prefect client still queues, while the server is up (as Prefect's
    own test harness does before it stops its server): at exit, Prefect would retry sending them to a server that
    is gone, for a minute and more, and print "Error logging to API"."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    EventsWorker.drain_all()


def finished_task_runs(flow_run_id: object, names: Iterable[str], timeout_s: float = 60) -> dict[str, Any]:
    """A flow run's task runs by task name, once each of `names` has its final state in the API (task states reach
    the server as events, recorded a moment after the flow returns); ServerError if one has none by `timeout_s`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    wanted, done = set(names), {}

    def all_final() -> bool:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        done.update({run.task_key.split("-")[0]: run for run in runs if run.state and run.state.is_final()})
        return wanted <= set(done)

    try:
        poll(all_final, timeout_s, interval_s=0.5)
    except tenacity.RetryError:
        raise ServerError(f"no final task-run state after {timeout_s} s for {sorted(wanted - set(done))}") from None
    return done


@contextlib.contextmanager
def running_server(home: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """A throwaway server on a free loopback port with its own SQLite database in `home`; yields its API URL and
    stops it (by PID) on exit. For the tests and the benchmark."""
    home.mkdir(parents=True, exist_ok=True)
    with serving(throwaway_env(home, env), home / "server.log", cwd=home) as (url, _):
        yield url


def throwaway_env(home: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a throwaway server in `home` (it runs there, away from any .env or prefect.toml of the
    caller's folder): nothing of the caller's server, database or profile, so it never touches a real one. The
    database is named outright: the environment beats profiles and prefect.toml."""
    private = ("PREFECT_API_", "PREFECT_SERVER_DATABASE_", "PREFECT_PROFILE")
    child_env = {k: v for k, v in (os.environ if env is None else env).items() if not k.startswith(private)}
    child_env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}",
    )
    return child_env
