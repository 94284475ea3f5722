"""The real stack for the end-to-end tests (tests/e2e/): started with `python -m launch.stack` on loopback, driven
through Prefect's CLI and client, and stopped by PID also when a test fails. A module's one stack is conftest's `stack`
fixture (module-scoped: each e2e module has a stack of its own), on PostgreSQL where it can run here."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from launch.server import log_tail
from launch.stack import DEFAULT_POOL, Stack
from tests.support.postgres import Cluster
from tests.support.seaweedfs import distinct_free_ports
from tests.support.waiting import wait_until

STACK_MODULE = "launch.stack"
MNIST = str(Path(sys.executable).parent / "mnist")
PREFECT = str(Path(sys.executable).parent / "prefect")
RUN_TIMEOUT_S = 240


@dataclass
class StackHandle:
    state_dir: Path
    port: int
    env: dict[str, str]
    output_dir: Path
    base_params: dict[str, Any]
    up_seconds: float
    first_run_id: str | None = None  # the first run of mnist/train (test_retrain_promotes_keeps_and_queues)

    @property
    def stack(self) -> Stack:
        return Stack(self.state_dir, "127.0.0.1", self.port, DEFAULT_POOL)

    def stack_command(
        self, command: str, timeout: float = 300, extra: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", STACK_MODULE, command, "--state-dir", str(self.state_dir), "--port", str(self.port)],
            env={**self.env, **(extra or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def prefect(self, *args: str, timeout: float = RUN_TIMEOUT_S + 30) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "PREFECT_API_URL": self.stack.api_url}
        return subprocess.run([PREFECT, *args], env=env, capture_output=True, text=True, timeout=timeout)

    def run_deployment(self, params: dict[str, Any], name: str = "mnist/train") -> tuple[str, float]:
        """`prefect deployment run NAME --param ... --watch`; returns the flow run id and the latency."""
        started = time.monotonic()
        result = self.prefect(
            "deployment", "run", name, "--param", f"params={json.dumps(params)}",
            "--watch", "--watch-timeout", str(RUN_TIMEOUT_S),
        )  # fmt: skip
        seconds = time.monotonic() - started
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"deployment run failed:\n{output}\n--- worker log ---\n{self.worker_log()}"
        assert "Completed" in output
        return re.search(r"UUID: ([0-9a-f-]{36})", output).group(1), seconds  # type: ignore[union-attr]

    def worker_log(self) -> str:
        return log_tail(self.stack.log_path("worker"), 60)

    # Through Prefect's client, as the stack itself talks to the API; records as JSON-shaped dicts.
    def deployment(self) -> dict[str, Any]:
        with self.stack.client() as client:
            return client.read_deployment_by_name("mnist/train").model_dump(mode="json")

    def work_pool(self) -> dict[str, Any]:
        with self.stack.client() as client:
            return client.read_work_pool(DEFAULT_POOL).model_dump(mode="json")

    def flow_run(self, flow_run_id: str) -> dict[str, Any]:
        with self.stack.client() as client:
            return client.read_flow_run(uuid.UUID(flow_run_id)).model_dump(mode="json")

    def flow_run_states(self, flow_run_id: str) -> list[dict[str, Any]]:
        with self.stack.client() as client:
            return [state.model_dump(mode="json") for state in client.read_flow_run_states(uuid.UUID(flow_run_id))]

    def submit(self, params: dict[str, Any]) -> str:
        """A run of mnist/train created through the API (not watched); returns its id."""
        with self.stack.client() as client:
            run = client.create_flow_run_from_deployment(self.deployment()["id"], parameters={"params": params})
        return str(run.id)

    def manual_runs(self) -> list[dict[str, Any]]:
        """Runs of the deployment that were not created by its schedule."""
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        deployment_filter = DeploymentFilter(id=DeploymentFilterId(any_=[uuid.UUID(self.deployment()["id"])]))
        with self.stack.client() as client:
            runs = client.read_flow_runs(deployment_filter=deployment_filter)
        return [run.model_dump(mode="json") for run in runs if not run.auto_scheduled]

    def artifacts(self, flow_run_id: str) -> dict[str, dict[str, Any]]:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        artifact_filter = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(flow_run_id)]))
        with self.stack.client() as client:
            found = client.read_artifacts(artifact_filter=artifact_filter)
        return {artifact.key: artifact.model_dump(mode="json") for artifact in found if artifact.key}


def recorded_pids(state_dir: Path) -> dict[str, int]:
    try:
        state = json.loads((state_dir / "stack.json").read_text())
    except (OSError, ValueError):
        return {}
    return {role: state[f"{role}_pid"] for role in ("serve", "worker", "server") if state.get(f"{role}_pid")}


CORRECTIONS_TRIGGER = 5


def stack_env_for(mnist_mirror: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_API_")}
    env.update(
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="1",
        # A queued run retries for the slot every second instead of every 30 s.
        PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="1",
        MNIST_MIRROR=str(mnist_mirror),
        # No scheduled runs: the deployments' schedules (the weekly retrain, the monitor every 15 minutes) would start
        # runs on the test stack's worker in the middle of tests that count its runs and stop its worker. The
        # schedules themselves are still declared and checked (test_deployment.py).
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
        # The stack's model server announces mnist.feedback.ready after 5 corrections (not 50): test_deployment.py.
        MNIST_FEEDBACK_RETRAIN_AFTER=str(CORRECTIONS_TRIGGER),
    )
    return env


@contextmanager
def running_stack(
    state_dir: Path, env: dict[str, str], output_dir: Path, base_params: dict[str, Any]
) -> Iterator[StackHandle]:
    # The stack's model server (mnist serve) on a port of its own, following this test's runs.
    serve_port, stack_port = distinct_free_ports(2)
    env = {**env, "PREFECT_HOME": str(state_dir / "prefect-home"), "MNIST_SERVE_PORT": str(serve_port),
           "MNIST_SERVE_OUTPUT_DIR": str(output_dir)}  # fmt: skip
    handle = StackHandle(state_dir, stack_port, env, output_dir, base_params, 0.0)
    try:
        started = time.monotonic()
        up = handle.stack_command("up")
        handle.up_seconds = time.monotonic() - started
        assert up.returncode == 0, f"stack up failed:\n{up.stdout}\n{up.stderr}"
        # The way to stop it names this stack's folder (`make stack-down` would stop the default one).
        assert f"-m launch.stack --state-dir {state_dir.resolve()} down" in up.stdout, up.stdout
        database = "PostgreSQL" if "PREFECT_API_DATABASE_CONNECTION_URL" in env else "SQLite"
        print(f"\nstack up ({database}): {handle.up_seconds:.1f} s")
        yield handle
    finally:
        pids = recorded_pids(state_dir)
        try:
            handle.stack_command("down", timeout=120)
        finally:
            # Safety net if `down` failed or hung: whatever `up` recorded and still runs is killed, by PID.
            for role, pid in pids.items():
                if Stack.is_ours(pid, role):
                    os.killpg(pid, signal.SIGKILL)


# --- PostgreSQL: the module's one stack keeps its state there where PostgreSQL can run ------------------------


@dataclass
class StackDatabase:
    """The module stack's database: PostgreSQL where it can run here (its `url`), else SQLite (`why_not` says why)."""

    url: str | None
    why_not: str = ""


def database_for(postgres_cluster: Cluster) -> StackDatabase:
    """A database of its own in the session's PostgreSQL cluster; $MNIST_TEST_POSTGRES_URL uses an existing one.
    Without PostgreSQL's binaries (or, as root, a `postgres` user) the stack uses SQLite and only
    test_deployment_runs_against_postgres is skipped."""
    if os.environ.get("MNIST_TEST_POSTGRES_URL"):
        return StackDatabase(os.environ["MNIST_TEST_POSTGRES_URL"])
    if postgres_cluster.port is None:
        return StackDatabase(None, postgres_cluster.why_not)
    return StackDatabase(postgres_cluster.create_database(f"prefect_{uuid.uuid4().hex[:8]}"))  # one per module


def stack_for(
    tmp_path_factory: pytest.TempPathFactory,
    stack_env: dict[str, str],
    stack_database: StackDatabase,
    request: pytest.FixtureRequest,
    mnist_data_dir: Path,
    mnist_mirror: Path,
) -> Iterator[StackHandle]:
    """The one stack of a module (tests/e2e/test_deployment.py's): on PostgreSQL where it can run here, else on
    SQLite (a PREFECT_HOME whose database is already set up, as after a first `stack up`: the server is healthy
    ~13 s sooner)."""
    state_dir = tmp_path_factory.mktemp("stack")
    output_dir = tmp_path_factory.mktemp("runs")
    # 300 outlier images, not 3,000: the first run would make them (~8 s of CPU); what is tested here is the stack.
    base = {"epochs": 1, "outlier_images": 300, "data_dir": str(mnist_data_dir), "output_dir": str(output_dir),
            "mirror": [str(mnist_mirror)], "device": "cpu"}  # fmt: skip
    if stack_database.url:
        stack_env = {**stack_env, "PREFECT_API_DATABASE_CONNECTION_URL": stack_database.url}
    else:  # asked for only here: on PostgreSQL, the session's server is not needed
        request.getfixturevalue("prefect_home_with_database")(state_dir / "prefect-home")
    with running_stack(state_dir, stack_env, output_dir, base) as handle:
        yield handle


FINAL_STATES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def wait_for_final(
    state_type: Callable[[], str | None], flow_run_id: str, timeout_s: float, details: Callable[[], str] = str
) -> str:
    """The flow run's final state type, polling `state_type` (read through whichever API the test drives)."""
    return wait_until(
        lambda: (state := state_type()) in FINAL_STATES and state,
        timeout_s,
        lambda: f"{flow_run_id} not final after {timeout_s} s:\n{details()}",
        every_s=0.25,
    )


def _wait_for_final_state(stack: StackHandle, flow_run_id: str, timeout_s: float = RUN_TIMEOUT_S) -> str:
    return wait_for_final(lambda: stack.flow_run(flow_run_id)["state_type"], flow_run_id, timeout_s, stack.worker_log)


# Long enough (an epoch takes ~1 s here) that the run is surely still training when it is cancelled or the server
# restarts; small enough that a regression which lets it run on costs a minute, not ten.
LONG_RUN = {"epochs": 60, "batch_size": 64, "hidden_sizes": [32]}
