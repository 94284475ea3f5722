"""End to end: the real stack (server, pool, deployments from deployments/, worker) and `prefect deployment run`.

Run alone with `pytest -m e2e`. Every process is started on 127.0.0.1 by these fixtures and stopped by PID,
also when a test fails.
"""

import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from deployments.stack import DEFAULT_POOL, Stack
from launch.server import free_port, log_tail
from mnist_core.config import RunParams
from mnist_core.registry.store import read_champion, read_registry
from mnist_core.training.checkpoint import load_checkpoint
from tests.conftest import PROJECT_ROOT
from tests.postgres import Cluster
from tests.seaweedfs import SeaweedFS

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

STACK_SCRIPT = PROJECT_ROOT / "deployments" / "stack.py"
MNIST = str(Path(sys.executable).parent / "mnist")
PREFECT = str(Path(sys.executable).parent / "prefect")
RUN_TIMEOUT_S = 240
# A run worse than any 1-epoch run of the default recipe (about 68 % against about 96 %).
WORSE = {"lr": 0.001, "hidden_sizes": [8]}


def alive(pid: int) -> bool:
    """Running (a zombie, which has no command line, counts as gone)."""
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return False


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
            [sys.executable, str(STACK_SCRIPT), command, "--state-dir", str(self.state_dir), "--port", str(self.port)],
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


@pytest.fixture(scope="module")
def stack_env(mnist_mirror: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_API_")}
    env.update(
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="1",
        # A queued run retries for the slot every second instead of every 30 s.
        PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="1",
        MNIST_MIRROR=str(mnist_mirror),
    )
    return env


@contextmanager
def running_stack(
    state_dir: Path, env: dict[str, str], output_dir: Path, base_params: dict[str, Any]
) -> Iterator[StackHandle]:
    # The stack's model server (mnist serve) on a port of its own, following this test's runs.
    env = {**env, "PREFECT_HOME": str(state_dir / "prefect-home"), "MNIST_SERVE_PORT": str(free_port()),
           "MNIST_SERVE_OUTPUT_DIR": str(output_dir)}  # fmt: skip
    handle = StackHandle(state_dir, free_port(), env, output_dir, base_params, 0.0)
    try:
        started = time.monotonic()
        up = handle.stack_command("up")
        handle.up_seconds = time.monotonic() - started
        assert up.returncode == 0, f"stack up failed:\n{up.stdout}\n{up.stderr}"
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


@pytest.fixture(scope="module")
def stack_database(postgres_cluster: Cluster) -> StackDatabase:
    """A database of its own in the session's PostgreSQL cluster; $MNIST_TEST_POSTGRES_URL uses an existing one.
    Without PostgreSQL's binaries (or, as root, a `postgres` user) the stack uses SQLite and only
    test_deployment_runs_against_postgres is skipped."""
    if os.environ.get("MNIST_TEST_POSTGRES_URL"):
        return StackDatabase(os.environ["MNIST_TEST_POSTGRES_URL"])
    if postgres_cluster.port is None:
        return StackDatabase(None, postgres_cluster.why_not)
    return StackDatabase(postgres_cluster.create_database("prefect"))


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    stack_env: dict[str, str],
    stack_database: StackDatabase,
    request: pytest.FixtureRequest,
    mnist_data_dir: Path,
    mnist_mirror: Path,
) -> Iterator[StackHandle]:
    """The one stack of this module: on PostgreSQL where it can run here, else on SQLite (a PREFECT_HOME whose
    database is already set up, as after a first `stack up`: the server is healthy ~13 s sooner)."""
    state_dir = tmp_path_factory.mktemp("stack")
    output_dir = tmp_path_factory.mktemp("runs")
    base = {"epochs": 1, "data_dir": str(mnist_data_dir), "output_dir": str(output_dir),
            "mirror": [str(mnist_mirror)], "device": "cpu"}  # fmt: skip
    if stack_database.url:
        stack_env = {**stack_env, "PREFECT_API_DATABASE_CONNECTION_URL": stack_database.url}
    else:  # asked for only here: on PostgreSQL, the session's server is not needed
        request.getfixturevalue("prefect_home_with_database")(state_dir / "prefect-home")
    with running_stack(state_dir, stack_env, output_dir, base) as handle:
        yield handle


def test_deployment_declares_schedule_concurrency_and_pool(stack: StackHandle) -> None:
    deployment = stack.deployment()
    assert deployment["work_pool_name"] == DEFAULT_POOL
    assert deployment["parameters"] == {}, "a bare `deployment run` must use the flow's own defaults"
    [schedule] = deployment["schedules"]
    assert schedule["active"] and schedule["schedule"]["cron"] == "0 3 * * 1"
    assert schedule["schedule"]["timezone"] == "UTC"
    assert deployment["global_concurrency_limit"]["limit"] == 1
    assert deployment["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    assert stack.work_pool()["type"] == "process"


def test_stack_up_is_idempotent(stack: StackHandle) -> None:
    before = json.loads((stack.state_dir / "stack.json").read_text())
    again = stack.stack_command("up")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "server: already running" in again.stdout and "worker: already running" in again.stdout
    after = json.loads((stack.state_dir / "stack.json").read_text())
    assert (after["server_pid"], after["worker_pid"]) == (before["server_pid"], before["worker_pid"])
    assert stack.stack.worker_online()
    # Found by a new user: `MNIST_WORKER_LIMIT=1 make stack-up` on a running stack kept the unlimited worker.
    limited = stack.stack_command("up", extra={"MNIST_WORKER_LIMIT": "1"})
    assert "worker: restarting with --limit 1" in limited.stdout, limited.stdout + limited.stderr
    state = json.loads((stack.state_dir / "stack.json").read_text())
    assert state["worker_limit"] == "1" and state["worker_pid"] != after["worker_pid"]
    assert state["server_pid"] == after["server_pid"] and stack.stack.worker_online()
    unlimited = stack.stack_command("up")  # back as it was, for the tests after this one
    assert "worker: restarting with --limit none" in unlimited.stdout, unlimited.stdout + unlimited.stderr


@pytest.mark.parametrize(
    ("override", "field"), [({"epochs": 0}, "params.epochs"), ({"epoch": 1}, "'epoch' was unexpected")]
)
def test_invalid_parameters_are_refused_before_a_run_exists(
    stack: StackHandle, override: dict[str, Any], field: str
) -> None:
    runs_before = len(stack.manual_runs())
    result = stack.prefect("deployment", "run", "mnist/train", "--param", f"params={json.dumps(override)}")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert field in output and "Validation failed" in output
    assert len(stack.manual_runs()) == runs_before


def test_retrain_promotes_keeps_and_queues(stack: StackHandle) -> None:
    """Run 1 becomes champion. Then two retrains at once: one forced (submitted through the API) and one worse
    (`deployment run --watch`): they run one after the other, the worse one keeps the champion, the forced one wins."""
    first_id, first_seconds = stack.run_deployment(stack.base_params)
    stack.first_run_id = first_id
    print(f"\nfirst run (deployment run --watch, 1 epoch): {first_seconds:.1f} s")
    assert stack.flow_run(first_id)["state_type"] == "COMPLETED"
    artifacts = stack.artifacts(first_id)
    expected = {"mnist-report", "mnist-epoch-metrics", "mnist-per-class", "mnist-confusion-matrix", "mnist-model",
                "mnist-model-card", "mnist-run-folder", "mnist-promotion"}  # fmt: skip
    assert expected <= set(artifacts), sorted(artifacts)
    assert "promoted (first champion)" in artifacts["mnist-promotion"]["data"]
    table = artifacts["mnist-epoch-metrics"]["data"]
    metrics = pd.DataFrame(json.loads(table) if isinstance(table, str) else table)
    assert metrics["epoch"].tolist() == [1]
    champion = read_champion(stack.output_dir, "mnist")
    assert champion is not None and champion.decision == "first"
    report = (champion.run_dir / "report.md").read_text()
    assert "## Champion / challenger" in report and "promoted (first champion)" in report
    listed = stack.prefect("artifact", "ls", "-o", "json", timeout=60)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert expected <= {artifact["key"] for artifact in json.loads(listed.stdout)}

    # The same parameters as the champion's: without force_retrain it would stop before training (unchanged).
    forced_id = stack.submit({**stack.base_params, "force_promote": True, "force_retrain": True})
    worse_id, worse_seconds = stack.run_deployment({**stack.base_params, **WORSE})
    print(f"two concurrent runs, the worse one watched: {worse_seconds:.1f} s")
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while stack.flow_run(forced_id)["state_type"] not in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
        assert time.monotonic() < deadline, stack.worker_log()
        time.sleep(1)
    assert stack.flow_run(forced_id)["state_type"] == "COMPLETED", stack.worker_log()

    # Concurrency limit 1 with ENQUEUE: the later run waited for the slot and started after the other finished.
    history = {run_id: stack.flow_run_states(run_id) for run_id in (forced_id, worse_id)}

    def when(states: list[dict[str, Any]], state_type: str) -> datetime:
        return min(datetime.fromisoformat(state["timestamp"]) for state in states if state["type"] == state_type)

    spans = sorted((when(states, "RUNNING"), when(states, "COMPLETED"), run_id) for run_id, states in history.items())
    (_, first_end, _), (second_start, _, second) = spans
    assert second_start >= first_end, f"the runs overlapped: {spans}"
    assert any(state["name"] == "AwaitingConcurrencySlot" for state in history[second]), history[second]

    # Whatever the order, the worse run kept the champion of its time and the forced run took over.
    registry = read_registry(stack.output_dir).set_index("run_id")
    assert registry["decision"].tolist()[0] == "first" and sorted(registry["decision"]) == ["first", "forced", "kept"]
    kept = registry.loc[registry["decision"] == "kept"].iloc[0]
    promotion = stack.artifacts(worse_id)["mnist-promotion"]["data"]
    assert "not promoted (champion kept)" in promotion
    # Both figures are in the report: the challenger's and the champion's, re-scored on the same test set.
    assert f"{kept['test_accuracy']:.2%}" in promotion and f"{kept['champion_test_accuracy']:.2%}" in promotion
    assert kept["test_accuracy"] < 0.9 < kept["champion_test_accuracy"]
    forced_run = registry.index[registry["decision"] == "forced"][0]
    final = read_champion(stack.output_dir, "mnist")
    assert final is not None and final.run_id == forced_run and final.previous_run_id == champion.run_id
    assert "promoted (forced)" in stack.artifacts(forced_id)["mnist-promotion"]["data"]
    assert (registry["sha256_test_images"] == champion.sha256["test_images"]).all()


def test_batch_inference_deployment_predicts_with_the_champion(stack: StackHandle, tmp_path: Path) -> None:
    """`prefect deployment run mnist-predict/batch` on the worker: every input predicted or reported, a CSV, and
    artifacts naming the champion's run id and model SHA-256."""
    from mnist_core.data.idx import read_images, read_labels

    if read_champion(stack.output_dir, "mnist") is None:  # run alone (-k): train the champion first
        stack.run_deployment(stack.base_params)
    champion = read_champion(stack.output_dir, "mnist")
    mirror = Path(stack.env["MNIST_MIRROR"])
    images, labels = (
        read_images(mirror / "t10k-images-idx3-ubyte.gz"),
        read_labels(mirror / "t10k-labels-idx1-ubyte.gz"),
    )
    np_images = tmp_path / "digits.npy"
    np.save(np_images, images[:200])
    (tmp_path / "not-an-image.png").write_text("hello")
    output = tmp_path / "predictions.csv"
    params = {"inputs": [str(np_images), str(tmp_path / "not-an-image.png")], "output_dir": str(stack.output_dir),
              "output": str(output), "threshold": 0.5}  # fmt: skip
    flow_run_id, seconds = stack.run_deployment(params, name="mnist-predict/batch")
    print(f"\nbatch inference (deployment run --watch, 201 inputs): {seconds:.1f} s")

    predictions = pd.read_csv(output, keep_default_na=False)
    assert len(predictions) == 201
    predicted = predictions.iloc[:200]
    assert (predicted["error"] == "").all()
    assert (predicted["predicted_class"].astype(int) == labels[:200]).mean() > 0.9
    assert "not-an-image.png" in predictions.iloc[200]["error"]
    artifacts = stack.artifacts(flow_run_id)
    assert {"mnist-predictions", "mnist-prediction-summary", "mnist-predictions-csv"} <= set(artifacts)
    summary = artifacts["mnist-prediction-summary"]["data"]
    onnx_file = champion.run_dir / "model.onnx"
    assert champion.run_id in summary and hashlib.sha256(onnx_file.read_bytes()).hexdigest() in summary
    assert "failed inputs: 1" in summary and "slowest part:" in summary
    assert len(json.loads(artifacts["mnist-predictions"]["data"])) == 100
    assert output.as_uri() in artifacts["mnist-predictions-csv"]["data"]


def run_folders(output_dir: Path) -> set[str]:
    return {path.name for path in output_dir.iterdir() if path.is_dir() and not path.name.startswith(".")}


def _wait_for_file(path: Path, stack: StackHandle, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.is_file():
        assert time.monotonic() < deadline, f"no {path.name} after {timeout_s} s:\n{stack.worker_log()}"
        time.sleep(0.1)


def _wait_for_final_state(stack: StackHandle, flow_run_id: str, timeout_s: float = RUN_TIMEOUT_S) -> str:
    deadline = time.monotonic() + timeout_s
    while (state := stack.flow_run(flow_run_id)["state_type"]) not in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
        assert time.monotonic() < deadline, f"{flow_run_id} still {state} after {timeout_s} s:\n{stack.worker_log()}"
        time.sleep(0.25)
    return state


# Long enough (an epoch takes ~1 s here) that the run is surely still training when it is cancelled or the server
# restarts; small enough that a regression which lets it run on costs a minute, not ten.
LONG_RUN = {"epochs": 60, "batch_size": 64, "hidden_sizes": [32]}


def test_cancelling_a_deployment_run_stops_training_promptly(stack: StackHandle) -> None:
    """`prefect flow-run cancel` (what the UI's Cancel does): the flow-run process stops mid-training, the run ends
    Cancelled, and the checkpoint it had written is intact (a new run with the same parameters resumes it)."""
    params = {**stack.base_params, **LONG_RUN, "run_name": "cancelled"}
    checkpoint = stack.output_dir / ".checkpoints" / "cancelled" / "checkpoint.pt"
    rows_before, folders_before = len(read_registry(stack.output_dir)), run_folders(stack.output_dir)
    flow_run_id = stack.submit(params)
    _wait_for_file(checkpoint, stack)
    started = time.monotonic()
    cancel = stack.prefect("flow-run", "cancel", flow_run_id, timeout=60)
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    state = _wait_for_final_state(stack, flow_run_id, timeout_s=60)
    seconds = time.monotonic() - started
    print(f"\ncancel to Cancelled: {seconds:.1f} s")
    assert state == "CANCELLED" and seconds < 30, (state, seconds, stack.worker_log())
    epoch = load_checkpoint(checkpoint, RunParams(**params))["epoch"]
    time.sleep(3)
    assert load_checkpoint(checkpoint, RunParams(**params))["epoch"] == epoch < LONG_RUN["epochs"], "still training"
    assert len(read_registry(stack.output_dir)) == rows_before and run_folders(stack.output_dir) == folders_before


def test_a_run_goes_on_through_a_restart_of_the_stacks_server(stack: StackHandle) -> None:
    """The stack's server stops and starts again mid-training (`make stack-up` after it died, an upgrade): the
    run's calls to the API wait for it (Prefect's client retries), training goes on, and the run completes."""
    params = {**stack.base_params, **LONG_RUN, "epochs": 8, "run_name": "server-restarted"}
    rows_before = len(read_registry(stack.output_dir))
    flow_run_id = stack.submit(params)
    _wait_for_file(stack.output_dir / ".checkpoints" / "server-restarted" / "checkpoint.pt", stack)
    started = time.monotonic()
    server_pid = json.loads((stack.state_dir / "stack.json").read_text())["server_pid"]
    assert stack.stack.stop(server_pid, "server")
    assert not stack.stack.server_healthy()
    up = stack.stack_command("up")
    assert up.returncode == 0 and "server: starting" in up.stdout, up.stdout + up.stderr
    restarted = time.monotonic() - started
    state = _wait_for_final_state(stack, flow_run_id)
    print(
        f"\nserver down and up again in {restarted:.1f} s; the run ended {state} {time.monotonic() - started:.1f} s "
        "after the server was stopped"
    )
    assert state == "COMPLETED", stack.worker_log()
    assert len(read_registry(stack.output_dir)) == rows_before + 1


def _start_worker(stack: StackHandle, name: str, machines: dict[str, Any]) -> subprocess.Popen[bytes]:
    """One more worker on the stack's pool, on a machine of its own, taking one run at a time, in its own process
    group (stopped by PID)."""
    env = {**stack.env, "PREFECT_API_URL": stack.stack.api_url, "MNIST_WORKER_NAME": name, **machines["shared"]}
    worker = [PREFECT, "worker", "start", "--pool", DEFAULT_POOL, "--type", "process", "--name", name, "--limit", "1"]
    command = on_machine(worker, machines, name)
    log = open(stack.state_dir / f"{name}.log", "wb")  # noqa: SIM115 - the worker writes it until it is stopped
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _online(stack: StackHandle, names: set[str]) -> bool:
    with stack.stack.client() as client:
        workers = client.read_workers_for_work_pool(DEFAULT_POOL)
    return names <= {worker.name for worker in workers if worker.status == "ONLINE"}


def on_machine(command: list[str], machines: dict[str, Any], name: str) -> list[str]:
    """`command` as on a machine of its own: in a mount namespace where the path every machine uses for its files
    (`machines["mount"]`) is that machine's own folder, as the same path is another disk on another machine. What
    the others wrote there cannot be read, whatever path a record names."""
    own = machines["homes"] / name
    own.mkdir(parents=True, exist_ok=True)
    script = 'mount --bind "$1" "$0" && shift && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(machines["mount"]), str(own),
            *command]  # fmt: skip


def _run_sweep(stack: StackHandle, sweep: dict[str, Any], machines: dict[str, Any], name: str) -> subprocess.Popen[str]:
    """`python flows/sweep.py SWEEP` against the stack, on a machine of its own (its trials run on the pool)."""
    env = {**stack.env, "PREFECT_API_URL": stack.stack.api_url, **machines["shared"]}
    command = on_machine([sys.executable, str(PROJECT_ROOT / "flows" / "sweep.py"), json.dumps(sweep)], machines, name)
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _sweep_summary(output: str) -> dict[str, Any]:
    return json.loads(output[output.rindex("\n{") + 1 :])  # the JSON summary it prints last


def can_unshare() -> str | None:
    """Why a private mount namespace cannot be made here (it needs root), or None."""
    probe = {"mount": Path(tempfile.mkdtemp()), "homes": Path(tempfile.mkdtemp())}
    try:
        done = subprocess.run(on_machine(["true"], probe, "probe"), capture_output=True, timeout=30)
    except FileNotFoundError:
        return "`unshare` (util-linux)"
    return None if done.returncode == 0 else f"mount namespaces: {done.stderr.decode(errors='replace')[-200:]}"


@pytest.fixture
def machines(
    stack: StackHandle, seaweedfs: SeaweedFS, postgres_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """What machines that share no disk share: the registry in PostgreSQL and the models in an S3 store
    (SeaweedFS). Each machine's `mount` path (its output_dir's parent) is its own folder under `homes`."""
    problem = can_unshare() or (postgres_cluster.why_not if postgres_cluster.port is None else None)
    if problem:
        pytest.skip(f"machines that share no disk need {problem}")
    registry = postgres_cluster.create_database("shared_registry").replace("+asyncpg", "+psycopg")
    shared = {**seaweedfs.env(), "MNIST_REGISTRY_URL": registry}
    for name, value in shared.items():
        monkeypatch.setenv(name, value)  # this process reads the same registry
    mount = stack.state_dir / "machine"
    mount.mkdir(exist_ok=True)
    homes = stack.state_dir / "machines"
    return {"shared": shared, "mount": mount, "homes": homes, "store": seaweedfs.env()["MNIST_ARTIFACT_STORE"]}


def _predict_elsewhere(machines: dict[str, Any], digit: Path, name: str) -> str:
    """`mnist predict` on a machine of its own that sees none of the workers' files: the model it names."""
    env = {**os.environ, **machines["shared"]}
    command = on_machine(
        [MNIST, "predict", str(digit), "--output-dir", str(machines["mount"] / "runs")], machines, name
    )
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return re.search(r"^Model: run (\S+),", done.stdout, re.MULTILINE).group(1)


def test_a_sweep_fans_trials_out_over_two_machines_and_survives_one_killed(
    stack: StackHandle, machines: dict[str, Any], mnist_tensors, tmp_path: Path
) -> None:
    """Two workers as two machines (each with its own disk behind the same output_dir, sharing only the registry
    in PostgreSQL and the S3 store), taking one trial each at a time (`--limit 1`; the stack's own worker is
    stopped meanwhile, and `stack up` brings it back after), and the sweep on a third that cannot read their files:
    1. 2 one-epoch trials, one per worker: ranked by validation accuracy; the best, trained on another machine, is
       fetched from the store and promoted; `mnist predict` on a fourth machine uses it.
    2. 2 trials with a forced promotion, and a worker SIGKILLed (by PID) while both run: its trial is reported,
       the sweep completes and its surviving trial becomes champion; predict follows; `mnist registry rollback`
       puts the first champion back, and predict follows again."""
    from PIL import Image
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.sorting import ArtifactSort

    shared, homes = machines["shared"], machines["homes"]
    digit = tmp_path / "digit.png"
    Image.fromarray(mnist_tensors["test_images"][0].numpy()).save(digit)
    base = {**stack.base_params, "output_dir": str(machines["mount"] / "runs")}  # the same path, each machine's own
    own = recorded_pids(stack.state_dir).get("worker")
    if own and Stack.is_ours(own, "worker"):
        # Gone before the trials are dispatched: a worker still shutting down took a trial once (seen in CI).
        stack.stack.stop(own, "worker")
        assert not Stack.is_ours(own, "worker")
    workers = {name: _start_worker(stack, name, machines) for name in ("trial-worker-1", "trial-worker-2")}
    sweep_process = None
    try:
        deadline = time.monotonic() + 60
        while not _online(stack, set(workers)):
            assert time.monotonic() < deadline, "the two trial workers did not come online"
            time.sleep(0.5)
        started = time.monotonic()
        sweep = {"base": base, "grid": {"lr": [0.1, 0.3]}, "trials": 2, "concurrency": 2}
        sweep_process = _run_sweep(stack, sweep, machines, "sweep-machine")
        output, _ = sweep_process.communicate(timeout=600)
        seconds = time.monotonic() - started
        assert sweep_process.returncode == 0, output[-3000:]
        assert "2 trials, 2 at a time (pool)" in output
        with stack.stack.client() as client:
            [trials] = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["mnist-sweep-trials"])),
                sort=ArtifactSort.CREATED_DESC,
                limit=1,
            )
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["sweep-trial"])))
        rows = json.loads(trials.data)
        assert len(rows) == 2 and all(row["state"] == "COMPLETED" for row in rows), rows
        accuracies = [row["val_accuracy"] for row in rows]
        assert accuracies == sorted(accuracies, reverse=True) and [row["rank"] for row in rows] == [1, 2]
        assert {row["worker"] for row in rows} == {"trial-worker-1", "trial-worker-2"}
        # Each trial wrote to its own machine's disk, which the sweep could not read: it fetched the best.
        best = Path(rows[0]["run_dir"])
        assert best.parent == machines["mount"] / "runs"
        on_its_disk = homes / rows[0]["worker"] / "runs" / best.name
        assert (on_its_disk / "model_card.json").is_file() and not (
            homes / "sweep-machine" / "runs" / best.name
        ).exists()
        first = read_champion(tmp_path / "anywhere", "mnist")  # the shared registry, whatever the folder
        assert first is not None and first.run_id == best.name and first.decision == "first"
        assert first.artifact_store == machines["store"] and first.card_sha256
        assert (homes / "sweep-machine" / "runs" / ".artifact-cache" / first.card_sha256).is_dir()
        assert _predict_elsewhere(machines, digit, "third-machine") == first.run_id
        delays = sorted((run.start_time - run.created).total_seconds() for run in runs if run.start_time)
        print(f"\nsweep of 2 one-epoch trials on 2 machines: {seconds:.1f} s wall; "
              f"dispatch to start {delays[0]:.1f}-{delays[-1]:.1f} s")  # fmt: skip

        forced = {**base, "epochs": 3, "force_promote": True}
        killed = {"base": forced, "grid": {"lr": [0.2, 0.3]}, "concurrency": 2, "trial_timeout_s": 120}
        sweep_process = _run_sweep(stack, killed, machines, "sweep-machine")
        running = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=["RUNNING"])))
        deadline = time.monotonic() + 120
        while True:  # both trials running: one on each worker
            with stack.stack.client() as client:
                busy = [run for run in client.read_flow_runs(flow_run_filter=running) if "sweep-trial" in run.tags]
            if len(busy) == 2:
                break
            assert time.monotonic() < deadline and sweep_process.poll() is None, "the trials did not start"
            time.sleep(0.25)
        workers["trial-worker-2"].kill()  # SIGKILL to the worker's PID alone, as an OOM killer or `kill -9` does
        output, _ = sweep_process.communicate(timeout=300)
        assert sweep_process.returncode == 0, output[-3000:]
        summary = _sweep_summary(output)
        # The killed worker's trial is marked Crashed (its process went with the worker); the other completes.
        states = sorted((row["state"], row["worker"]) for row in summary["ranked"])
        print(f"after SIGKILL of a worker mid-trial: {states}")
        assert states == [("COMPLETED", "trial-worker-1"), ("CRASHED", None)], states
        survivor = Path(summary["best"]["run_dir"]).name  # the completed trial, trained on trial-worker-1
        assert "forced" in summary["promotion"] or "promoted" in summary["promotion"], summary["promotion"]
        second = read_champion(tmp_path / "anywhere", "mnist")
        assert second is not None and second.run_id == survivor and second.decision == "forced"
        assert _predict_elsewhere(machines, digit, "third-machine") == survivor
        env = {**os.environ, **shared, "PREFECT_API_URL": stack.stack.api_url}
        rollback = subprocess.run([MNIST, "registry", "rollback"], env=env, capture_output=True, text=True, timeout=60)
        assert rollback.returncode == 0 and first.run_id in rollback.stdout, rollback.stdout + rollback.stderr
        with stack.stack.client() as client:  # visible in Prefect, where automatic promotions are
            [announced] = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["mnist-promotion"])),
                sort=ArtifactSort.CREATED_DESC,
                limit=1,
            )
        assert "rollback" in announced.data and first.run_id in announced.data, announced.data
        assert _predict_elsewhere(machines, digit, "third-machine") == first.run_id
    finally:
        if sweep_process is not None and sweep_process.poll() is None:
            sweep_process.kill()
        for worker in workers.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)
        up = stack.stack_command("up")  # the stack's own worker again, for the tests after this one
        print(f"stack up after the sweep test: {up.returncode}\n{up.stdout}{up.stderr}")


def test_cancelling_a_sweep_deployment_run_cancels_its_trials(stack: StackHandle) -> None:
    """`prefect deployment run mnist-sweep/default`, then `prefect flow-run cancel` of the sweep (what the UI's
    Cancel does): the trials it started on the pool are cancelled with it."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    if not stack.stack.worker_online():  # a test before this one may have left the stack without its worker
        up = stack.stack_command("up")
        assert up.returncode == 0 and stack.stack.worker_online(), up.stdout + up.stderr
    sweep = {"base": {**stack.base_params, **LONG_RUN}, "grid": {"lr": [0.1, 0.2]}, "concurrency": 2,
             "promote_best": False}  # fmt: skip
    with stack.stack.client() as client:
        deployment = client.read_deployment_by_name("mnist-sweep/default")
        sweep_run = client.create_flow_run_from_deployment(deployment.id, parameters={"sweep": sweep})
    tagged = FlowRunFilter(tags=FlowRunFilterTags(all_=[f"sweep-{sweep_run.id}"]))
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:  # a trial is training
        with stack.stack.client() as client:
            trials = client.read_flow_runs(flow_run_filter=tagged)
        if any(run.state_type and run.state_type.value == "RUNNING" for run in trials):
            break
        assert time.monotonic() < deadline, f"no trial started:\n{stack.worker_log()}"
        time.sleep(0.5)
    started = time.monotonic()
    cancel = stack.prefect("flow-run", "cancel", str(sweep_run.id), timeout=60)
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    assert _wait_for_final_state(stack, str(sweep_run.id), timeout_s=90) == "CANCELLED"
    states = {str(run.id): _wait_for_final_state(stack, str(run.id), timeout_s=90) for run in trials}
    print(f"\nsweep cancelled, its {len(states)} trials ended {sorted(states.values())} in "
          f"{time.monotonic() - started:.1f} s")  # fmt: skip
    assert states and set(states.values()) == {"CANCELLED"}, (states, stack.worker_log())


def test_deployment_runs_against_postgres(stack: StackHandle, stack_database: StackDatabase) -> None:
    """The stack on PostgreSQL: a run of mnist/train (the first one of this module's stack) completes, and the
    server really kept its state in PostgreSQL."""
    if stack_database.url is None:
        pytest.skip(stack_database.why_not)
    if stack.first_run_id is None:  # run alone (-k): run it here
        stack.first_run_id, seconds = stack.run_deployment(stack.base_params)
        print(f"\nrun on PostgreSQL: {seconds:.1f} s")
    flow_run_id = stack.first_run_id
    assert stack.flow_run(flow_run_id)["state_type"] == "COMPLETED"
    assert "mnist-promotion" in stack.artifacts(flow_run_id)
    # The server really kept its state in PostgreSQL: the run is a row there.
    assert flow_run_state_in_postgres(stack_database.url, flow_run_id) == "COMPLETED"
    assert not (stack.state_dir / "prefect-home" / "prefect.db").exists()


def test_stack_down_stops_what_up_started(stack: StackHandle) -> None:
    """Last test on this stack: `down` stops the worker and the server by PID; a second `down` is a no-op."""
    state = json.loads((stack.state_dir / "stack.json").read_text())
    pids = [state["worker_pid"], state["server_pid"]]
    assert all(alive(pid) for pid in pids)
    down = stack.stack_command("down", timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "worker: stopped" in down.stdout and "server: stopped" in down.stdout
    assert not any(alive(pid) for pid in pids)
    assert not stack.stack.server_healthy()
    again = stack.stack_command("down", timeout=60)
    assert again.returncode == 0 and "server: not running" in again.stdout


def flow_run_state_in_postgres(url: str, flow_run_id: str) -> str | None:
    import asyncpg

    async def query() -> str | None:
        connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            return await connection.fetchval("SELECT state_type FROM flow_run WHERE id = $1", uuid.UUID(flow_run_id))
        finally:
            await connection.close()

    return asyncio.run(query())
