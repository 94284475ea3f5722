"""The sweep end to end, on a stack of its own (so it runs beside tests/e2e/test_deployment.py's): trials fanned out
over two workers that are two machines (a mount namespace each, sharing only the registry in PostgreSQL and the
models in an S3 store), a worker killed mid-trial, and a sweep deployment run cancelled with its trials."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from launch.stack import DEFAULT_POOL, Stack
from mnist_core.registry.store import read_champion
from tests.support import PROJECT_ROOT
from tests.support.postgres import Cluster
from tests.support.seaweedfs import SeaweedFS
from tests.support.stack import (
    LONG_RUN,
    MNIST,
    PREFECT,
    RUN_TIMEOUT_S,
    StackHandle,
    _wait_for_final_state,
    recorded_pids,
)
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _start_worker(stack: StackHandle, name: str, machines: dict[str, Any]) -> subprocess.Popen[bytes]:
    """One more worker on the stack's pool, on a machine of its own, taking one run at a time, in its own process
    group (stopped by PID)."""
    env = {**stack.env, "PREFECT_API_URL": stack.stack.api_url, "MNIST_WORKER_NAME": name, **machines["shared"]}
    worker = [PREFECT, "worker", "start", "--pool", DEFAULT_POOL, "--type", "process", "--name", name, "--limit", "1"]
    command = on_machine(worker, machines, name)
    log = open(stack.state_dir / f"{name}.log", "wb")  # noqa: SIM115 - the worker writes it until it is stopped
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


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
        joined = set(workers)
        wait_until(lambda: joined <= stack.stack.online_workers(), 60, "the two trial workers did not come online", 0.5)
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

        def both_trials_running() -> bool:  # one on each worker
            assert sweep_process.poll() is None, "the sweep exited before its trials started"
            with stack.stack.client() as client:
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
    sweep = {"base": {**stack.base_params, **LONG_RUN}, "grid": {"lr": [0.1]}, "concurrency": 1,
             "promote_best": False}  # fmt: skip
    with stack.stack.client() as client:
        deployment = client.read_deployment_by_name("mnist-sweep/default")
        sweep_run = client.create_flow_run_from_deployment(deployment.id, parameters={"sweep": sweep})
    tagged = FlowRunFilter(tags=FlowRunFilterTags(all_=[f"sweep-{sweep_run.id}"]))

    def trials_once_one_trains() -> list:  # empty (so, waited on) until a trial is training
        with stack.stack.client() as client:
            trials = client.read_flow_runs(flow_run_filter=tagged)
        return trials if any(run.state_type and run.state_type.value == "RUNNING" for run in trials) else []

    trials = wait_until(
        trials_once_one_trains, RUN_TIMEOUT_S, lambda: f"no trial started:\n{stack.worker_log()}", every_s=0.5
    )
    started = time.monotonic()
    cancel = stack.prefect("flow-run", "cancel", str(sweep_run.id), timeout=60)
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    assert _wait_for_final_state(stack, str(sweep_run.id), timeout_s=90) == "CANCELLED"
    states = {str(run.id): _wait_for_final_state(stack, str(run.id), timeout_s=90) for run in trials}
    print(f"\nsweep cancelled, its {len(states)} trials ended {sorted(states.values())} in "
          f"{time.monotonic() - started:.1f} s")  # fmt: skip
    assert states and set(states.values()) == {"CANCELLED"}, (states, stack.worker_log())
