"""The real `mnist` flow, end to end on the MNIST mirror, with its artifacts read back from the Prefect API."""

import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psutil
import pytest

from mnist_core.config import RunParams
from tests.support import PROJECT_ROOT
from tests.support.artifacts import read_artifacts

pytestmark = pytest.mark.slow


@pytest.fixture
def flow_run(trained_run):
    return trained_run


def test_flow_writes_a_complete_run_folder(flow_run, mnist_tensors) -> None:
    from mnist_core.evaluation.evaluate import score_model_file

    result, _, output_dir = flow_run
    run_dir = result.exported.run_dir
    assert run_dir.parent == output_dir.resolve()
    card = json.loads((run_dir / "model_card.json").read_text())
    assert card["metrics"]["test_accuracy"] > 0.95  # one epoch; chance is 0.10
    # The card's figure is the exported model's, scored again here on the same test set.
    test_images, test_labels = mnist_tensors["test_images"], mnist_tensors["test_labels"]
    assert card["metrics"]["test_accuracy"] == score_model_file(result.exported.model, test_images, test_labels)
    assert card["metrics"]["test_accuracy"] == result.exported.card.metrics.test_accuracy
    # The first run in an empty output root becomes its champion.
    assert result.promotion.kind == "first" and result.champion_run_id == result.exported.run_id
    assert set(card["dataset"]["sha256"]) == {"train_images", "train_labels", "test_images", "test_labels"}
    assert card["dataset"]["sizes"] == {"train": 55000, "val": 5000, "test": 10000, "extra_train": 0, "extra_val": 0,
                                        "extra_test": 0, "extra_outliers": 0}  # fmt: skip
    assert card["environment"]["device"] == "cpu" and card["environment"]["torch"]
    # The log line and the card agree on the threads training used (one intra-op thread on a CPU).
    assert card["environment"]["cpu_threads"] == 1
    # The checkpoint is dropped once the run folder exists.
    assert not any((output_dir / ".checkpoints").glob("*/checkpoint.pt"))


def test_every_stage_is_a_task_run_with_its_duration_in_prefect(flow_run) -> None:
    """Stage durations are Prefect's own records of the task runs, not timed by hand."""
    result, flow_run_id, _ = flow_run
    from launch.server import finished_task_runs
    from tasks import __all__ as every_task

    stages = [name for name in every_task if name != "gather"]  # gathering corrections: only a run with them
    task_runs = finished_task_runs(flow_run_id, stages)
    assert set(stages) == {"download", "transform", "fingerprint", "train", "evaluate", "export", "promote"}
    assert set(stages) <= set(task_runs), sorted(task_runs)
    for name in stages:
        assert task_runs[name].state.is_completed(), (name, task_runs[name].state)
        assert task_runs[name].total_run_time.total_seconds() > 0, name
    train_seconds = result.exported.card.timings.train_seconds
    assert 0 < train_seconds <= task_runs["train"].total_run_time.total_seconds()


def test_artifacts_are_published_with_stable_keys(flow_run) -> None:
    result, flow_run_id, _ = flow_run
    artifacts = read_artifacts(flow_run_id)
    expected = {"mnist-report", "mnist-epoch-metrics", "mnist-per-class", "mnist-confusion-matrix",
                "mnist-training-progress", "mnist-model", "mnist-run-folder"}  # fmt: skip
    assert expected <= set(artifacts)

    report = artifacts["mnist-report"]
    accuracy = result.exported.card.metrics.test_accuracy
    assert f"{accuracy:.2%}" in report.data and str(result.exported.run_dir) in report.data

    epochs = json.loads(artifacts["mnist-epoch-metrics"].data)
    assert len(epochs) == 1 and epochs[0]["epoch"] == 1 and 0.9 < epochs[0]["val_accuracy"] <= 1

    per_class = json.loads(artifacts["mnist-per-class"].data)
    assert [row["class"] for row in per_class] == [str(digit) for digit in range(10)]
    assert sum(row["support"] for row in per_class) == 10000

    confusion = json.loads(artifacts["mnist-confusion-matrix"].data)
    assert len(confusion) == 10 and sum(sum(v for k, v in row.items() if k != "true") for row in confusion) == 10000

    assert artifacts["mnist-training-progress"].data == 100.0
    assert result.exported.model.as_uri() in artifacts["mnist-model"].data


def test_rerun_after_a_late_failure_reuses_the_run_and_records_it_once(
    prefect_server, mnist_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    from flows.mnist import mnist
    from mnist_core.registry.store import read_registry

    # The module, not the task of the same name that the `tasks` package exports.
    promote_module = importlib.import_module("tasks.promote")

    params = RunParams(epochs=1, data_dir=mnist_data_dir, output_dir=tmp_path / "runs")

    def registry_unavailable(*args: Any, **kwargs: Any) -> None:
        raise OSError("registry volume went away")

    monkeypatch.setattr(promote_module, "RegistryStore", registry_unavailable)
    assert mnist(params, return_state=True).is_failed()
    first_folders = [p for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")]
    assert len(first_folders) == 1
    assert list((tmp_path / "runs" / ".checkpoints").glob("*/checkpoint.pt")), "checkpoint must survive a failure"

    monkeypatch.undo()
    result = mnist(params)
    assert result.exported.run_dir == first_folders[0]  # resumed after the last epoch, same run folder
    registry = read_registry(tmp_path / "runs")
    assert registry["run_id"].tolist() == [first_folders[0].name]
    assert not list((tmp_path / "runs" / ".checkpoints").glob("*/checkpoint.pt"))


def test_invalid_parameters_fail_before_any_work(prefect_server, tmp_path: Path) -> None:
    from prefect.exceptions import ParameterTypeError

    from flows.mnist import mnist

    with pytest.raises(ParameterTypeError, match="epochs"):
        mnist({"epochs": 0, "data_dir": str(tmp_path / "data"), "output_dir": str(tmp_path / "out")})
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()


def test_readme_command_runs_the_flow(
    mnist_mirror: Path, tmp_path: Path, prefect_home_with_database, data_dir_with_outliers: Path
) -> None:
    """`python flows/mnist.py` as a user runs it: the Prefect server it starts, flags, the closing summary."""
    home = prefect_home_with_database(tmp_path / "prefect")  # set up as by a first run: its server starts in ~5 s
    env = {**os.environ, "MNIST_MIRROR": str(mnist_mirror), "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, str(PROJECT_ROOT / "flows" / "mnist.py"), "--epochs", "1", "--batch-size", "128",
               "--data-dir", str(data_dir_with_outliers), "--output-dir", str(tmp_path / "runs")]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report_line = next(line for line in result.stdout.splitlines() if line.startswith("Report: "))
    report = Path(report_line.removeprefix("Report: "))
    assert report.is_file() and report.parent.parent == (tmp_path / "runs").resolve()
    accuracy = json.loads((report.parent / "model_card.json").read_text())["metrics"]["test_accuracy"]
    assert accuracy > 0.95
    # Not a terminal: the plain log, one line per epoch and no progress bar; a successful run warns of nothing.
    output = result.stdout + result.stderr
    assert "epoch 1/1: train loss" in output and "━" not in output and " steps " not in output
    assert not [line for line in output.splitlines() if "| ERROR" in line or "| WARNING" in line], output[-3000:]
    assert "anonymous usage data" not in output  # the run's own server has analytics off: no telemetry notice
    assert "Prefect server of this run: http://127.0.0.1:" in output, "the run's server is not on loopback"
    # No link to the run's own server, which is gone once the run ends; instead, where the run stays recorded.
    assert "View at" not in output
    assert result.stdout.splitlines()[-1].startswith("mnist: the run's Prefect server has stopped")


def test_on_a_terminal_training_and_download_show_a_progress_bar(
    mnist_mirror: Path, tmp_path: Path, prefect_server: str, data_dir_with_outliers: Path
) -> None:
    """`python flows/mnist.py` in a pseudo-terminal, as a person runs it (reporting to the session's server: the
    server a run starts for itself is the README command's test above)."""
    import pty

    env = {**os.environ, "MNIST_MIRROR": str(mnist_mirror), "PREFECT_API_URL": prefect_server, "COLUMNS": "160"}
    env.pop("MNIST_PROGRESS", None)
    command = [sys.executable, str(PROJECT_ROOT / "flows" / "mnist.py"), "--epochs", "2", "--data-dir",
               str(data_dir_with_outliers), "--output-dir", str(tmp_path / "runs")]  # fmt: skip
    controller, terminal = pty.openpty()
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    chunks, deadline = [], time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            if not select.select([controller], [], [], 1.0)[0]:
                continue
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the terminal's other end closed
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(controller)
        if process.poll() is None and time.monotonic() >= deadline:
            process.kill()
    assert process.wait(timeout=60) == 0
    output = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))  # colours, cursor moves
    assert "download train-images-idx3-ubyte.gz" in output  # a real fetch (from the mirror) shows its bytes
    assert "/430 steps" in output and "epoch 2/2" in output  # 2 x 215 steps of 256
    assert "train loss" in output and "Test accuracy:" in output
    assert "| ERROR" not in output and "| WARNING" not in output


def test_the_command_line_reports_to_the_local_stack_when_it_runs(
    prefect_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without PREFECT_API_URL, `mnist train` reports to this checkout's stack when its server runs (one UI for
    every run), here the session's real server recorded as a stack's; a stack whose server is gone is not used."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import flows.mnist as flow_module
    from launch.cli import train
    from launch.stack import running_api_url
    from mnist_core.errors import DataError

    port = str(urlparse(prefect_server).port)
    [server_pid] = [process.pid for process in psutil.process_iter(["cmdline"])
                    if {"server", "start", port} <= set(process.info["cmdline"] or [])]  # fmt: skip
    stack_dir = tmp_path / "stack"
    stack_dir.mkdir()
    (stack_dir / "stack.json").write_text(json.dumps({"server_pid": server_pid, "api_url": prefect_server}))
    monkeypatch.setenv("MNIST_STACK_DIR", str(stack_dir))
    seen: list[str] = []

    def flow_that_records_the_api(params: RunParams) -> None:
        seen.append(PREFECT_API_URL.value())
        raise DataError("stopped by the test")

    monkeypatch.setattr(flow_module, "mnist", flow_that_records_the_api)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        code = train(["--data-dir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "runs")])
    output = capsys.readouterr()
    assert code == 1 and seen == [prefect_server], output
    assert "reporting to the local stack's Prefect server" in output.out
    assert "starting a Prefect server" not in output.out

    gone = tmp_path / "gone"
    gone.mkdir()
    (gone / "stack.json").write_text(json.dumps({"server_pid": 2**22 + 1, "api_url": prefect_server}))
    assert running_api_url(gone) is None and running_api_url(tmp_path / "none") is None


def test_the_command_line_uses_the_users_server_when_one_is_set(
    prefect_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With PREFECT_API_URL set, `python flows/mnist.py` starts no server of its own (without it,
    tests/launch/test_interrupt.py and test_readme_command_runs_the_flow above run the one it starts)."""
    from prefect.settings import PREFECT_API_URL

    import flows.mnist as flow_module
    from launch.cli import train
    from mnist_core.errors import DataError

    seen: list[str] = []

    def flow_that_records_the_api(params: RunParams) -> None:
        seen.append(PREFECT_API_URL.value())
        raise DataError("stopped by the test")

    monkeypatch.setattr(flow_module, "mnist", flow_that_records_the_api)
    code = train(["--data-dir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "runs")])
    output = capsys.readouterr()
    assert code == 1 and seen == [prefect_server]
    assert "starting a Prefect server" not in output.out and "mnist: error: stopped by the test" in output.err
