"""A throwaway PostgreSQL cluster on a free loopback port, for the whole test session: the e2e stack's Prefect
server and the registry's PostgreSQL tests each take a database of their own in it. Stopped by PID."""

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launch.server import free_port, wait_for


@dataclass
class Cluster:
    """`host:port` of a cluster whose superuser `prefect` logs in without a password (trust, loopback only), or
    why there is none (`why_not`)."""

    port: int | None
    bindir: Path | None = None
    why_not: str = ""

    def create_database(self, name: str) -> str:
        """A new database; its SQLAlchemy URL for the async driver (Prefect's); swap to +psycopg for sync."""
        assert self.port is not None and self.bindir is not None, self.why_not
        command = [str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "prefect", name]
        subprocess.run(command, check=True, capture_output=True)
        return f"postgresql+asyncpg://prefect@127.0.0.1:{self.port}/{name}"


def _version_key(bindir: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in bindir.parent.name.split(".") if part.isdigit())


def postgres_bindir() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True):
        if (candidate / "initdb").exists() and (candidate / "postgres").exists():
            return candidate
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@contextlib.contextmanager
def running_cluster() -> Iterator[Cluster]:
    bindir = postgres_bindir()
    if bindir is None:
        yield Cluster(None, why_not="PostgreSQL server binaries not found (run .ci/postgres.sh to install them)")
        return
    # PostgreSQL refuses to run as root: as root, run it as the `postgres` user.
    user = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            yield Cluster(None, why_not="running as root and there is no `postgres` user to run PostgreSQL as")
            return
    data_dir = Path(tempfile.mkdtemp(prefix="mnist-test-pg-"))
    if user:
        os.chown(data_dir, user.pw_uid, user.pw_gid)
    as_user: dict[str, Any] = {"user": user.pw_uid, "group": user.pw_gid} if user else {}
    port = free_port()
    server = None
    try:
        initdb = [str(bindir / "initdb"), "-D", str(data_dir / "db"), "-U", "prefect", "--auth=trust",
                  "--encoding=UTF8", "--no-sync"]  # fmt: skip
        subprocess.run(initdb, check=True, capture_output=True, **as_user)
        with open(data_dir / "server.log", "wb") as log:
            server = subprocess.Popen(
                [str(bindir / "postgres"), "-D", str(data_dir / "db"), "-p", str(port), "-h", "127.0.0.1",
                 "-k", str(data_dir), "-c", "fsync=off", "-c", "max_connections=200"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **as_user,
            )  # fmt: skip
        ready = [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)]
        wait_for("PostgreSQL server", lambda: subprocess.run(ready, capture_output=True).returncode == 0,
                 lambda: server.poll() is None, data_dir / "server.log", timeout_s=60)  # fmt: skip
        yield Cluster(port, bindir)
    finally:
        if server is not None:
            server.send_signal(signal.SIGINT)  # fast shutdown: disconnect clients, no waiting for them
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        shutil.rmtree(data_dir, ignore_errors=True)
