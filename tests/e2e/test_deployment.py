"""End to end: the real stack (server, pool, deployments from deployments/, worker) and `prefect deployment run`.

Run alone with `pytest -m e2e`. Every process is started on 127.0.0.1 by conftest's `stack` fixture
(tests/support/stack.py) and stopped by PID, also when a test fails.
"""

import asyncio
import hashlib
import io
import json
import re
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from launch.stack import DEFAULT_POOL
from mnist_core.config import RunParams
from mnist_core.data.idx import read_images, read_labels
from mnist_core.registry.feedback import FeedbackStore
from mnist_core.registry.store import read_champion, read_registry
from mnist_core.training.checkpoint import load_checkpoint
from tests.support import running
from tests.support.stack import CORRECTIONS_TRIGGER, LONG_RUN, StackDatabase, StackHandle, _wait_for_final_state
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

# A run worse than any 1-epoch run of the default recipe (about 68 % against about 96 %).
WORSE = {"lr": 0.001, "hidden_sizes": [8]}


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
    assert "unchanged on this server, kept" in again.stdout  # the same database, the same code: no redeploy
    after = json.loads((stack.state_dir / "stack.json").read_text())
    assert (after["server_pid"], after["worker_pid"]) == (before["server_pid"], before["worker_pid"])
    assert stack.stack.worker_online()


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
    assert _wait_for_final_state(stack, forced_id) == "COMPLETED", stack.worker_log()

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
    wait_until(path.is_file, timeout_s, lambda: f"no {path.name} after {timeout_s} s:\n{stack.worker_log()}")


def test_a_run_goes_on_through_a_restart_of_the_stacks_server_and_is_cancelled_promptly(stack: StackHandle) -> None:
    """Two things that happen to a long run, one after the other on one run:
    1. The stack's server stops and starts again mid-training (`make stack-up` after it died, an upgrade): the
       run's calls to the API wait for it (Prefect's client retries), training goes on, and its log lines of later
       epochs reach the restarted server. The server's database kept the deployments: `up` does not apply them
       again.
    2. `prefect flow-run cancel` (what the UI's Cancel does): the flow-run process stops mid-training, the run ends
       Cancelled, and the checkpoint it had written is intact (a new run with the same parameters resumes it)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    params = {**stack.base_params, **LONG_RUN, "run_name": "restarted-then-cancelled"}
    checkpoint = stack.output_dir / ".checkpoints" / "restarted-then-cancelled" / "checkpoint.pt"
    rows_before, folders_before = len(read_registry(stack.output_dir)), run_folders(stack.output_dir)
    flow_run_id = stack.submit(params)
    _wait_for_file(checkpoint, stack)

    started = time.monotonic()
    server_pid = json.loads((stack.state_dir / "stack.json").read_text())["server_pid"]
    assert stack.stack.stop(server_pid, "server")
    assert not stack.stack.server_healthy()
    up = stack.stack_command("up")
    assert up.returncode == 0 and "server: starting" in up.stdout, up.stdout + up.stderr
    assert "deployments/prefect.yaml: unchanged on this server, kept" in up.stdout, up.stdout
    restarted = time.monotonic() - started
    epoch_then = load_checkpoint(checkpoint, RunParams(**params))["epoch"]

    def epochs_logged_on_the_server() -> set[int]:
        with stack.stack.client() as client:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(flow_run_id)])))
        return {int(found.group(1)) for log in logs if (found := re.match(r"epoch (\d+)/", log.message))}

    def went_on() -> bool:
        assert stack.flow_run(flow_run_id)["state_type"] == "RUNNING", stack.worker_log()
        return max(epochs_logged_on_the_server(), default=0) > epoch_then

    wait_until(went_on, 60, lambda: f"no epoch after {epoch_then} logged:\n{stack.worker_log()}", every_s=0.5)
    print(f"\nserver down and up again in {restarted:.1f} s; training went on past epoch {epoch_then}")

    started = time.monotonic()
    cancel = stack.prefect("flow-run", "cancel", flow_run_id, timeout=60)
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    state = _wait_for_final_state(stack, flow_run_id, timeout_s=60)
    seconds = time.monotonic() - started
    print(f"cancel to Cancelled: {seconds:.1f} s")
    assert state == "CANCELLED" and seconds < 30, (state, seconds, stack.worker_log())
    epoch = load_checkpoint(checkpoint, RunParams(**params))["epoch"]
    time.sleep(3)
    assert load_checkpoint(checkpoint, RunParams(**params))["epoch"] == epoch < LONG_RUN["epochs"], "still training"
    assert len(read_registry(stack.output_dir)) == rows_before and run_folders(stack.output_dir) == folders_before


def test_corrections_sent_to_the_model_server_trigger_a_retrain_that_it_serves(stack: StackHandle) -> None:
    """Issue 30: corrections posted to the stack's `mnist serve` reach MNIST_FEEDBACK_RETRAIN_AFTER; the server
    announces mnist.feedback.ready once; the deployment's trigger (Prefect's automation, not a call of ours) starts
    mnist/train with corrections; its model becomes champion and the server answers with it."""
    serve = f"http://127.0.0.1:{stack.env['MNIST_SERVE_PORT']}"
    champion_before = httpx.get(f"{serve}/v2/health/ready", timeout=10).json()["model"]["run_id"]
    runs_before = {run["id"] for run in stack.manual_runs()}
    digits, labels = mnist_test_digits(Path(stack.env["MNIST_MIRROR"]), CORRECTIONS_TRIGGER + 2)
    for number in range(CORRECTIONS_TRIGGER):  # a person correcting: one image at a time, with its label
        answer = httpx.post(f"{serve}/feedback", files={"file": ("digit.png", png(digits[number]), "image/png")},
                            data={"label": str(labels[number])}, timeout=10)  # fmt: skip
        assert answer.status_code == 200, answer.text
    sent = time.monotonic()

    def triggered() -> dict[str, Any] | None:
        fresh = [run for run in stack.manual_runs() if run["id"] not in runs_before]
        return fresh[0] if fresh else None

    run = wait_until(triggered, 60, lambda: f"no run triggered:\n{stack.worker_log()}", every_s=0.25)
    created = time.monotonic() - sent
    assert run["parameters"]["params"]["corrections"] is True
    assert run["parameters"]["params"]["output_dir"] == str(stack.output_dir)
    assert run["created_by"] and run["created_by"]["type"] == "AUTOMATION", run["created_by"]  # by the trigger
    # More corrections while it runs: announced once, so no second run (checked after it ends).
    for number in range(CORRECTIONS_TRIGGER, len(labels)):
        httpx.post(f"{serve}/feedback", files={"file": ("digit.png", png(digits[number]), "image/png")},
                   data={"label": str(labels[number])}, timeout=10)  # fmt: skip
    assert _wait_for_final_state(stack, run["id"]) == "COMPLETED", stack.worker_log()
    champion = read_champion(stack.output_dir, "mnist")
    assert champion is not None and champion.run_id != champion_before

    def served() -> bool:
        return httpx.get(f"{serve}/v2/health/ready", timeout=10).json()["model"]["run_id"] == champion.run_id

    wait_until(served, 30, "the model server never answered with the new champion", every_s=0.25)
    answered = time.monotonic() - sent
    print(f"\ncorrections -> triggered run created in {created:.1f} s; new champion served {answered:.1f} s after "
          f"the {CORRECTIONS_TRIGGER}th correction")  # fmt: skip
    assert created < 30 and answered < 120
    store = FeedbackStore(stack.output_dir)
    used = store.corrections_of(champion.run_id)
    assert len(used["trained"]) + len(used["held_back"]) >= CORRECTIONS_TRIGGER
    assert [run["id"] for run in stack.manual_runs() if run["id"] not in runs_before] == [run["id"]]


def mnist_test_digits(mirror: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    images = read_images(mirror / "t10k-images-idx3-ubyte.gz")[:count]
    return images, read_labels(mirror / "t10k-labels-idx1-ubyte.gz")[:count]


def png(digit: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(255 - digit).save(buffer, "PNG")  # dark on white, as a person draws it
    return buffer.getvalue()


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
    """Last test on this stack: `down` stops the worker and the server by PID; a second `down` is a no-op. First,
    as the last use of the running stack, `up` with a worker limit (a restart of its worker)."""
    after = json.loads((stack.state_dir / "stack.json").read_text())
    # Found by a new user: `MNIST_WORKER_LIMIT=1 make stack-up` on a running stack kept the unlimited worker.
    limited = stack.stack_command("up", extra={"MNIST_WORKER_LIMIT": "1"})
    assert "worker: restarting with --limit 1" in limited.stdout, limited.stdout + limited.stderr
    state = json.loads((stack.state_dir / "stack.json").read_text())
    assert state["worker_limit"] == "1" and state["worker_pid"] != after["worker_pid"]
    assert state["server_pid"] == after["server_pid"] and stack.stack.worker_online()
    state = json.loads((stack.state_dir / "stack.json").read_text())
    pids = [state["worker_pid"], state["server_pid"]]
    assert all(running(pid) for pid in pids)
    down = stack.stack_command("down", timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "worker: stopped" in down.stdout and "server: stopped" in down.stdout
    assert not any(running(pid) for pid in pids)
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
