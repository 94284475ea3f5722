"""The local Prefect stack: server (SQLite, or PostgreSQL via PREFECT_API_DATABASE_CONNECTION_URL), the
`mnist-pool` process work pool, the deployments of deployments/prefect.yaml, one worker, and the model server
(`mnist serve`, following the champion of runs/; MNIST_SERVE_PORT, default 8000; MNIST_SERVE=0 leaves it out).

    python -m launch.stack up      # start what is not running yet, deploy what changed, wait until healthy
    python -m launch.stack status  # what runs, where
    python -m launch.stack down    # stop, by PID, what `up` started

State (PIDs, logs, the `env` file to source, and PREFECT_HOME unless you set one) lives in `.stack/`.
Importing this module starts nothing.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from launch.server import (
    api_url,
    prefect_command,
    server_healthy,
    start_prefect,
    start_server,
    stop_group,
    wait_for,
)
from mnist_core.files import atomic_write_text
from mnist_core.redact import redact_url
from mnist_core.settings import current as current_settings

if TYPE_CHECKING:  # Prefect is imported only where the API is called: `status` and `down` stay quick
    from prefect.client.orchestration import SyncPrefectClient

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PREFECT_FILE = PROJECT_ROOT / "deployments" / "prefect.yaml"
DEFAULT_POOL = "mnist-pool"  # the work_pool named in deployments/prefect.yaml
WORKER_NAME = "mnist-local-worker"
SERVE_ROLE = "serve"  # the model server: `python -m launch.cli serve ...`, not a prefect process


class Stack:
    def __init__(self, state_dir: Path, host: str, port: int, pool: str) -> None:
        self.state_dir = state_dir.resolve()
        self.host, self.port, self.pool = host, port, pool
        self.state_file = self.state_dir / "stack.json"
        self.log_dir = self.state_dir / "logs"
        # A user's own PREFECT_HOME wins; otherwise the stack keeps its database inside the ignored state folder.
        self.home = Path(os.environ.get("PREFECT_HOME") or self.state_dir / "prefect-home").expanduser().resolve()

    @property
    def api_url(self) -> str:
        return api_url(self.host, self.port)

    def client(self) -> "SyncPrefectClient":
        """Prefect's own client for this stack's API (it retries what the server marks retryable, e.g. 503 when
        SQLite is busy). Use it as a context manager."""
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(self.api_url)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PREFECT_HOME=str(self.home),
            PREFECT_API_URL=self.api_url,
            # Offline machines: with analytics on, the server keeps trying to reach the internet.
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
        )
        # Fast pick-up of manual runs; polling a local server every second costs nothing.
        env.setdefault("PREFECT_WORKER_QUERY_SECONDS", "1")
        return env

    # --- state -------------------------------------------------------------------------------------------------

    def read_state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_file.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def write_state(self, state: dict[str, Any]) -> None:
        atomic_write_text(self.state_file, json.dumps(state, indent=2))

    # --- processes ---------------------------------------------------------------------------------------------

    @staticmethod
    def is_ours(pid: int | None, role: str) -> bool:
        """Alive and still a `prefect <role>` process: a recycled PID must never be signalled."""
        if not pid:
            return False
        try:
            process = psutil.Process(pid)
            words = process.cmdline()  # a zombie has none
        except psutil.Error:
            return False
        if role == SERVE_ROLE:
            return "launch.cli" in words and SERVE_ROLE in words
        return any(word.endswith("prefect") for word in words) and role in words

    def stop(self, pid: int | None, role: str) -> bool:
        if not self.is_ours(pid, role):
            return False
        assert pid is not None
        stop_group(pid, partial(self.is_ours, pid, role))
        return True

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*prefect_command(), *args], cwd=PROJECT_ROOT, env=self.env(), capture_output=True, text=True
        )

    def log_path(self, role: str) -> Path:
        return self.log_dir / f"{role}.log"

    # --- health ------------------------------------------------------------------------------------------------

    def server_healthy(self) -> bool:
        return server_healthy(self.api_url)

    def worker_online(self) -> bool:
        return WORKER_NAME in self.online_workers()

    def online_workers(self) -> set[str]:
        """The names of the pool's workers whose heartbeats the server has now (none without a pool or server)."""
        try:
            with self.client() as client:
                workers = client.read_workers_for_work_pool(self.pool)
        except Exception:  # noqa: BLE001 - not there yet (no pool, no server): not online
            return set()
        return {worker.name for worker in workers if worker.status == "ONLINE"}

    def wait_for(self, what: str, check: Callable[[], bool], running: Callable[[], bool], role: str) -> None:
        try:
            wait_for(what, check, running, self.log_path(role))
        except RuntimeError as error:
            raise SystemExit(f"stack: {error}") from None

    # --- commands ----------------------------------------------------------------------------------------------

    def up(self) -> int:
        started = time.monotonic()
        state = self.read_state()
        if state and self.is_ours(state.get("server_pid"), "server") and state.get("port") != self.port:
            raise SystemExit(f"stack: already up on port {state['port']}; run `down` first to move it")
        state = self._up_server(state)
        print(f"server: healthy after {time.monotonic() - started:.1f} s")
        state = self._apply_deployments(state)
        self._up_worker(state)
        serving = self._up_serve(self.read_state())
        if not current_settings().mirror:
            print("note: MNIST_MIRROR is not set, so runs fetch MNIST from the official mirrors (needs internet)")
        env_file = self.state_dir / "env"
        env_file.write_text(f"export PREFECT_API_URL={self.api_url}\n", encoding="utf-8")
        if self.state_dir == default_state_dir().resolve():
            stop = f"make stack-down   (or: {sys.executable} -m launch.stack down)"
        else:  # found by a new user's try: `make stack-down` stops the default stack, not this one
            stop = f"{sys.executable} -m launch.stack --state-dir {self.state_dir} down"
        print(
            f"\nStack up in {time.monotonic() - started:.1f} s.\n"
            f"  UI:     {self.api_url.removesuffix('/api')}\n"
            f"  API:    {self.api_url}   (source {env_file} to point the prefect CLI at it)\n"
            f"  Run:    prefect deployment run mnist/train --watch\n"
            f'          prefect deployment run mnist-predict/batch --param \'params={{"inputs": ["DIR"]}}\' --watch\n'
            f"{serving}"
            f"  Logs:   {self.log_dir}\n"
            f"  Stop:   {stop}"
        )
        return 0

    def _up_server(self, state: dict[str, Any]) -> dict[str, Any]:
        """Start the server unless ours already runs, record it, wait until it is healthy; returns the state."""
        server_pid = state.get("server_pid")
        seen = server_settings(self.home)
        changed = changed_settings(state.get("server_settings"), seen)
        if self.is_ours(server_pid, "server") and changed:
            # Another database (or Prefect home) than the running server has: it must not go on serving the old one.
            print(f"server: restarting: its settings changed since it started ({', '.join(changed)})")
            self.stop(state.get("worker_pid"), "worker")  # a worker of the old server goes with it
            self.stop(server_pid, "server")
        if self.is_ours(server_pid, "server"):
            print(f"server: already running (PID {server_pid})")
            server_running = partial(self.is_ours, server_pid, "server")
        else:
            if self.server_healthy():
                raise SystemExit(f"stack: something else already serves {self.api_url}; pick another --port")
            self.home.mkdir(parents=True, exist_ok=True)
            server = start_server(self.host, self.port, self.env(), self.log_path("server"), cwd=PROJECT_ROOT)
            # Until the child has exec'd, its command line is this script's: watch the Popen, not the command line.
            server_pid, server_running = server.pid, partial(is_running, server)
            print(f"server: starting (PID {server_pid}, database {describe_database(self.home)})")
        state = {
            **state,
            "server_pid": server_pid,
            "port": self.port,
            "host": self.host,
            "api_url": self.api_url,
            "prefect_home": str(self.home),
            "pool": self.pool,
            "server_settings": seen,
        }
        # Saved before waiting, so `down` can stop a server that never became healthy.
        self.write_state(state)
        self.wait_for("server", self.server_healthy, server_running, "server")
        return state

    def _apply_deployments(self, state: dict[str, Any]) -> dict[str, Any]:
        """The pool and the deployments of prefect.yaml, unless the server's database already has them from this
        very code (a digest kept there as a Prefect variable, so a server restarted on the same database, or on
        another port, keeps them): `prefect deploy` imports every flow (~7 s of CPU on a 2-core machine) to
        re-apply what is unchanged."""
        applied = deployment_digest(PROJECT_ROOT, self.pool)
        prefect_file = PREFECT_FILE.relative_to(PROJECT_ROOT)
        if self._applied_digest() == applied and self._has_declared_deployments():
            print(f"pool {self.pool} and deployments from {prefect_file}: unchanged on this server, kept")
            return state
        self._record_digest("")  # forgotten first: a deploy that fails half-way is never taken for applied
        commands = [["--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_FILE)]]
        if not self._has_pool():
            commands.insert(0, ["work-pool", "create", self.pool, "--type", "process", "--overwrite"])
        for args in commands:
            result = self.cli(*args)
            if result.returncode != 0:
                raise SystemExit(f"stack: `prefect {' '.join(args)}` failed:\n{result.stdout}\n{result.stderr}")
        self._record_digest(applied)
        print(f"pool {self.pool} and deployments from {prefect_file}: applied")
        return state

    def _applied_digest(self) -> str | None:
        with self.client() as client:
            variable = client.read_variable_by_name(DEPLOYED_VARIABLE)
        return variable.value if variable is not None else None

    def _record_digest(self, digest: str) -> None:
        from prefect.client.schemas.actions import VariableCreate, VariableUpdate

        with self.client() as client:
            if client.read_variable_by_name(DEPLOYED_VARIABLE) is None:
                client.create_variable(VariableCreate(name=DEPLOYED_VARIABLE, value=digest))
            else:
                client.update_variable(VariableUpdate(name=DEPLOYED_VARIABLE, value=digest))

    def _has_pool(self) -> bool:
        from prefect.exceptions import ObjectNotFound

        try:
            with self.client() as client:
                return client.read_work_pool(self.pool).type == "process"
        except ObjectNotFound:
            return False

    def _has_declared_deployments(self) -> bool:
        """Every deployment of prefect.yaml is on the server, with its entrypoint and pool (none deleted since)."""
        import yaml

        declared = yaml.safe_load(PREFECT_FILE.read_text(encoding="utf-8"))["deployments"]
        with self.client() as client:
            present = {(d.name, d.entrypoint, d.work_pool_name) for d in client.read_deployments()}
        return all((d["name"], d["entrypoint"], d["work_pool"]["name"]) in present for d in declared)

    def _up_worker(self, state: dict[str, Any]) -> None:
        worker_pid = state.get("worker_pid")
        setting = current_settings().worker_limit  # runs at once on this worker (1 per GPU)
        limit = str(setting) if setting else None
        seen = worker_settings()
        changed = changed_settings(state.get("worker_settings"), seen)
        if self.is_ours(worker_pid, "worker") and changed and state.get("worker_limit") == limit:
            # Its flow runs inherit its environment: a worker started with another registry or store would go on
            # recording runs there, silently. A new worker with the settings of now.
            print(f"worker: restarting: its settings changed since it started ({', '.join(changed)})")
            self.stop(worker_pid, "worker")
        if self.is_ours(worker_pid, "worker") and state.get("worker_limit") != limit:
            # Asked for another limit than the running worker has (`MNIST_WORKER_LIMIT=1 make stack-up` on a running
            # stack): a new worker with the limit asked for, not a silent "already running".
            print(f"worker: restarting with --limit {limit or 'none'} (it had {state.get('worker_limit') or 'none'})")
            self.stop(worker_pid, "worker")
        if self.is_ours(worker_pid, "worker"):
            print(f"worker: already running (PID {worker_pid})")
            worker_running = partial(self.is_ours, worker_pid, "worker")
        else:
            args = ["worker", "start", "--pool", self.pool, "--type", "process", "--name", WORKER_NAME]
            if limit:
                args += ["--limit", limit]
            # MNIST_WORKER_NAME: the runs it starts inherit it, and a sweep's table says which worker ran each trial.
            env = {**self.env(), "MNIST_WORKER_NAME": WORKER_NAME}
            worker = start_prefect(args, env, self.log_path("worker"), cwd=PROJECT_ROOT)
            worker_pid, worker_running = worker.pid, partial(is_running, worker)
            self.write_state({**state, "worker_pid": worker_pid, "worker_limit": limit, "worker_settings": seen})
            print(f"worker: starting (PID {worker_pid}{f', --limit {limit}' if limit else ''})")
        self.wait_for("worker", self.worker_online, worker_running, "worker")

    def _up_serve(self, state: dict[str, Any]) -> str:
        """The model server beside the stack, on loopback; returns the line `up` prints about it."""
        settings = current_settings()
        if not settings.serve:
            return ""
        port = settings.serve_port
        output_dir = Path(settings.serve_output_dir or PROJECT_ROOT / "runs").expanduser().resolve()
        url = f"http://127.0.0.1:{port}"
        serve_pid = state.get("serve_pid")
        if self.is_ours(serve_pid, SERVE_ROLE):
            print(f"model server: already running (PID {serve_pid})")
            return f"  Model:  {state.get('serve_url', url)}/   (mnist serve; docs/serving.md)\n"
        if not port_free(port):
            # An add-on to the Prefect stack: a busy port must not cost the server and worker that did start.
            print(f"model server: NOT started: 127.0.0.1:{port} is in use; set MNIST_SERVE_PORT to a free port")
            return ""
        args = ["-m", "launch.cli", SERVE_ROLE, "--host", "127.0.0.1", "--port", str(port), "--output-dir",
                str(output_dir)]  # fmt: skip
        env = {**self.env(), "PYTHONPATH": str(PROJECT_ROOT)}
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path(SERVE_ROLE), "ab") as log:
            process = subprocess.Popen([sys.executable, *args], cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self.write_state({**state, "serve_pid": process.pid, "serve_url": url})
        print(f"model server: starting (PID {process.pid}, champion of {output_dir})")
        self.wait_for("model server", partial(serve_live, url), partial(is_running, process), SERVE_ROLE)
        return f"  Model:  {url}/   (mnist serve; docs/serving.md)\n"

    def down(self) -> int:
        state = self.read_state()
        if not state:
            print(f"stack: nothing to stop (no state in {self.state_dir})")
            return 0
        for role in (SERVE_ROLE, "worker", "server"):
            pid = state.pop(f"{role}_pid", None)
            print(f"{role}: {'stopped' if self.stop(pid, role) else 'not running'}" + (f" (PID {pid})" if pid else ""))
        self.write_state(state)
        return 0

    def status(self) -> int:
        state = self.read_state()
        server_pid, worker_pid = state.get("server_pid"), state.get("worker_pid")
        server_up = self.is_ours(server_pid, "server")

        def pid(value: int | None) -> str:
            return f" (PID {value})" if value else ""

        print(f"server: {'running' if server_up else 'stopped'}{pid(server_pid)} {state.get('api_url', '')}".rstrip())
        print(f"worker: {'running' if self.is_ours(worker_pid, 'worker') else 'stopped'}{pid(worker_pid)}")
        serve_pid = state.get("serve_pid")
        serve_up = self.is_ours(serve_pid, SERVE_ROLE)
        serve_url = state.get("serve_url", "")
        print(f"model server: {'running' if serve_up else 'stopped'}{pid(serve_pid)} {serve_url}".rstrip())
        return 0 if server_up else 1  # like `systemctl is-active`: a script can test it


# What `prefect deploy` reads: prefect.yaml, the flows' signatures and defaults (and whatever they import), the
# checkout's path (recorded as the deployments' working directory) and the pool. Where it wrote to is the database
# the digest is kept in (DEPLOYED_VARIABLE): a new database has none.
DEPLOYED_VARIABLE = "mnist_deployments_digest"
DEPLOYED_CODE = ("deployments", "flows", "tasks", "mnist_core", "reporting", "launch")


def deployment_digest(root: Path, pool: str) -> str:
    """What the deployments on a server were applied from; another value means `prefect deploy` must run again."""
    from importlib.metadata import version

    from mnist_core.fingerprint import code_digest
    from mnist_core.stamps import file_sha256, json_sha256

    facts = {
        "code": code_digest(root, DEPLOYED_CODE),
        "prefect.yaml": file_sha256(root / PREFECT_FILE.relative_to(PROJECT_ROOT)),
        "root": str(root),
        "pool": pool,
        "prefect": version("prefect"),
    }
    return json_sha256(facts)


# What a worker's flow runs read from its environment (not the stack's own or the model server's settings).
WORKER_SETTINGS = ("registry_url", "artifact_store", "aws_endpoint_url", "aws_access_key_id", "aws_secret_access_key",
                   "aws_region", "aws_allow_http", "mirror", "fashion_mnist_mirror")  # fmt: skip


def worker_settings() -> dict[str, str]:
    """A digest of each setting a worker runs with, by its variable's name: recorded, never the value (secrets)."""
    import hashlib

    from mnist_core.settings import load, variable

    settings, _ = load()
    digest = {}
    for field in WORKER_SETTINGS:
        value = settings.secret(field)
        digest[variable(field)] = hashlib.sha256(repr(value).encode()).hexdigest()[:16]
    return digest


def server_settings(home: Path) -> dict[str, str]:
    """A digest of what the server's database depends on (the URL may hold a password: only its digest is kept)."""
    import hashlib

    values = {"PREFECT_API_DATABASE_CONNECTION_URL": os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL", ""),
              "PREFECT_HOME": str(home)}  # fmt: skip
    return {name: hashlib.sha256(value.encode()).hexdigest()[:16] for name, value in values.items()}


def changed_settings(before: dict[str, str] | None, now: dict[str, str]) -> list[str]:
    """The names whose value differs from what the running process started with (none known: none changed,
    so a stack started before settings were recorded is not restarted for that alone)."""
    if not before:
        return []
    return sorted(name for name in now if before.get(name) != now[name])


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def serve_live(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/v2/health/live", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def is_running(process: subprocess.Popen[bytes]) -> bool:
    return process.poll() is None


def describe_database(home: Path) -> str:
    url = os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL")
    if url:
        return redact_url(url)
    return f"SQLite at {home / 'prefect.db'}"


def default_state_dir() -> Path:
    return Path(current_settings().stack_dir or PROJECT_ROOT / ".stack")


def running_api_url(state_dir: Path | None = None) -> str | None:
    """The API of this checkout's stack when its server runs and answers, else None: `mnist train` reports there
    when PREFECT_API_URL is not set, so every run shows in the stack's UI."""
    try:
        state = json.loads(((state_dir or default_state_dir()) / "stack.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    url = state.get("api_url")
    if not url or not Stack.is_ours(state.get("server_pid"), "server"):
        return None
    try:
        return url if server_healthy(url, timeout_s=2.0) else None
    except Exception:  # noqa: BLE001 - not answering, whatever the client says: the run starts a server of its own
        return None


def main(argv: list[str] | None = None) -> int:
    settings = current_settings()  # MNIST_STACK_HOST / _PORT / _DIR: the environment, else the settings file
    parser = argparse.ArgumentParser(prog="mnist stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--state-dir", type=Path, default=default_state_dir())
    parser.add_argument(
        "--host",
        default=settings.stack_host,
        help="address the server listens on (default 127.0.0.1; 0.0.0.0 lets remote workers in)",
    )
    parser.add_argument("--port", type=int, default=settings.stack_port)
    args = parser.parse_args(argv)
    stack = Stack(args.state_dir, args.host, args.port, DEFAULT_POOL)
    try:
        return {"up": stack.up, "down": stack.down, "status": stack.status}[args.command]()
    except KeyboardInterrupt:  # the server and worker run in sessions of their own: a Ctrl-C here does not reach them
        # Naming this stack's folder when it is not the default (found by a new user's try: the bare commands looked
        # at the default stack, "stopped", while this one's server ran on).
        own = "" if args.state_dir == default_state_dir() else f" --state-dir {args.state_dir}"
        print(f"stack: interrupted (Ctrl-C); what had started keeps running: `mnist stack{own} status` shows it, "
              f"`mnist stack{own} down` stops it", file=sys.stderr)  # fmt: skip
        return 130


if __name__ == "__main__":
    sys.exit(main())
