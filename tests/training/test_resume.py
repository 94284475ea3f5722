"""Crash and resume: a killed run, a retried task and an interrupted loop all end where an uninterrupted run ends."""

import importlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from mnist_core.config import RunParams
from mnist_core.data.idx import CLASS_NAMES
from mnist_core.data.not_digits import load_outliers, prepare_outliers
from mnist_core.data.prepare import pixel_statistics
from mnist_core.errors import TrainingError
from mnist_core.evaluation.evaluate import evaluate_model
from mnist_core.layout import CARD_FILE, METRICS_FILE
from mnist_core.training.checkpoint import CHECKPOINT_FILE, claim_checkpoint_data, load_checkpoint
from mnist_core.training.loop import TrainResult, train_model
from tests.support import PROJECT_ROOT
from tests.support.waiting import wait_until

CPU = torch.device("cpu")
# Small enough to be quick, with epochs long enough (~1-3 s) that the kill lands inside one.
RUN_ARGS = ["--epochs", "3", "--hidden-sizes", "32", "--batch-size", "128", "--seed", "0"]
COMPARED = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"]


def _params(**overrides: Any) -> RunParams:
    return RunParams(epochs=3, hidden_sizes=[32], batch_size=128, seed=0, **overrides)


def _history_frame(result: TrainResult) -> pd.DataFrame:
    return pd.DataFrame([vars(stats) for stats in result.history])[COMPARED]


def _assert_same_run(card: dict[str, Any], metrics: pd.DataFrame, reference: dict[str, Any]) -> None:
    pd.testing.assert_frame_equal(
        metrics[COMPARED].reset_index(drop=True), reference["history"], check_exact=False, rtol=1e-6, atol=1e-7
    )
    assert card["metrics"]["test_accuracy"] == pytest.approx(reference["test_accuracy"], abs=1e-9)
    assert card["metrics"]["best_epoch"] == reference["best_epoch"]


@pytest.fixture(scope="module")
def reference(mnist_tensors: dict[str, torch.Tensor], mnist_data_dir: Path) -> dict[str, Any]:
    """The uninterrupted run, in-process (on the seed-0 split the session fixture prepared): history, test accuracy."""
    # Normalized as the flow normalizes: with the statistics of the pixels it trains on; against the outliers the
    # flow's transform makes in the same data folder (outlier exposure).
    params = _params()
    outliers = load_outliers(prepare_outliers(mnist_data_dir, "mnist", params.outlier_images))
    data = {**mnist_tensors, "outlier_images": outliers}
    result = train_model(data, params, CPU, normalization=pixel_statistics(mnist_tensors["train_images"]))
    evaluation = evaluate_model(result.model, mnist_tensors["test_images"], mnist_tensors["test_labels"],
                                CLASS_NAMES["mnist"])  # fmt: skip
    return {"history": _history_frame(result), "test_accuracy": evaluation.accuracy, "best_epoch": result.best_epoch}


def _run_folders(output: Path) -> list[Path]:
    """Run folders only: hidden ones are checkpoints or staging, and the registry keeps files beside them."""
    return [p for p in output.iterdir() if p.is_dir() and not p.name.startswith(".")]


def _read_run(output: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    run_dirs = _run_folders(output)
    assert len(run_dirs) == 1, f"expected one run folder, found {run_dirs}"
    return json.loads((run_dirs[0] / CARD_FILE).read_text()), pd.read_csv(run_dirs[0] / METRICS_FILE)


# --- the real thing: SIGKILL a flow process, start it again ---------------------------------------------------------


def _flow_command(mnist_data_dir: Path, mnist_mirror: Path, output: Path) -> list[str]:
    return [sys.executable, str(PROJECT_ROOT / "flows" / "mnist.py"), "--data-dir", str(mnist_data_dir),
            "--mirror", str(mnist_mirror), "--output-dir", str(output), *RUN_ARGS]  # fmt: skip


def _flow_env(prefect_home: Path, api_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(prefect_home), PREFECT_API_URL=api_url, PYTHONUNBUFFERED="1")
    return env


def _wait_for(condition: Callable[[], bool], process: subprocess.Popen, timeout_s: float, what: str) -> None:
    def holds() -> bool:
        if condition():
            return True
        if process.poll() is not None:
            pytest.fail(f"the flow exited ({process.returncode}) before {what}")
        return False

    wait_until(holds, timeout_s, f"no {what} after {timeout_s} s", every_s=0.05)


@pytest.mark.slow
def test_killed_flow_resumes_from_checkpoint(
    mnist_data_dir: Path,
    mnist_mirror: Path,
    reference: dict[str, Any],
    tmp_path: Path,
    prefect_server: str,
) -> None:
    """SIGKILL mid-training, then the same command again: it resumes from the checkpoint. Both report to the
    session's server: what resumes is on disk, and a run's own server (killed with it, stopped by the kernel) is
    tests/launch/test_interrupt.py's."""
    output = tmp_path / "runs"
    command = _flow_command(mnist_data_dir, mnist_mirror, output)
    env = _flow_env(tmp_path / "prefect-home", prefect_server)
    checkpoint = output / ".checkpoints" / _params().checkpoint_name() / "checkpoint.pt"

    with open(tmp_path / "first.log", "wb") as log:
        first = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)  # fmt: skip
        try:
            _wait_for(checkpoint.is_file, first, 180, "first checkpoint")
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL
    killed_after = load_checkpoint(checkpoint, _params(output_dir=output))["epoch"]
    assert 1 <= killed_after < 3, "the kill did not land mid-run"
    assert not _run_folders(output), "a killed run must not leave a run folder"

    second = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300,
                            start_new_session=True)  # fmt: skip
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    card, metrics = _read_run(output)
    assert card["timings"]["resumed_from_epoch"] == killed_after
    _assert_same_run(card, metrics, reference)
    assert not checkpoint.parent.exists(), "the finished run's checkpoint folder should be cleaned up"


# --- Prefect's own retry of the train task ----------------------------------------------------------------------------


@pytest.mark.slow
def test_prefect_retry_of_train_task_resumes(
    prefect_server,
    mnist_data_dir: Path,
    reference: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flow_module = importlib.import_module("flows.mnist")
    train_module = importlib.import_module("tasks.train")  # the flow imports the task from it when it trains
    real_train_model = train_module.train_model
    calls: list[int] = []

    def crash_after_first_checkpoint(*args: Any, **kwargs: Any) -> TrainResult:
        calls.append(len(calls) + 1)
        if len(calls) > 1:
            return real_train_model(*args, **kwargs)
        report = args[4] if len(args) > 4 else kwargs.get("on_epoch")

        def on_epoch(stats) -> None:
            if report is not None:
                report(stats)
            raise RuntimeError("injected crash after epoch 1 (its checkpoint is already on disk)")

        return real_train_model(*args[:4], on_epoch=on_epoch, **{k: v for k, v in kwargs.items() if k != "on_epoch"})

    monkeypatch.setattr(train_module, "train_model", crash_after_first_checkpoint)
    monkeypatch.setattr(train_module, "train", train_module.train.with_options(retries=1, retry_delay_seconds=0))
    output = tmp_path / "runs"
    secret_mirror = "http://reader:s3cret-token@127.0.0.1:9/mnist/"  # never contacted: the data is cached
    params = _params(output_dir=output, data_dir=mnist_data_dir, mirror=[secret_mirror])

    # Prefect reconfigures logging when a run starts (caplog's root handler misses its records): listen directly.
    records: list[str] = []
    listener = logging.Handler(logging.DEBUG)
    listener.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    watched = [logging.getLogger(name) for name in ("prefect", "mnist_core")]
    for logger in watched:
        logger.addHandler(listener)
    try:
        result = flow_module.mnist(params)
    finally:
        for logger in watched:
            logger.removeHandler(listener)
    log_text = "\n".join(records)

    assert calls == [1, 2], "the train task was not retried exactly once"
    card, metrics = _read_run(output)
    assert result.exported.run_dir.name == card["run_id"]
    assert card["timings"]["resumed_from_epoch"] == 1
    _assert_same_run(card, metrics, reference)
    # No secret in the run folder or the logs; the masked mirror shows the check looked at the right text.
    run_dir = result.exported.run_dir
    for path in run_dir.iterdir():
        if path.suffix in (".json", ".md", ".csv"):
            assert "s3cret-token" not in path.read_text(), f"secret leaked into {path.name}"
    assert "***@127.0.0.1:9" in card["params"]["mirror"][0]
    assert "s3cret-token" not in log_text
    assert "***@127.0.0.1:9" in log_text, "the train task's parameter log line was not captured"


# --- in-process: interrupted loop, foreign checkpoint, half-written checkpoint ---------------------------------------


class _Crash(Exception):
    pass


def _crash_at(epoch: int) -> Callable[[Any], None]:
    def on_epoch(stats) -> None:
        if stats.epoch == epoch:
            raise _Crash

    return on_epoch


def test_interrupted_training_resumes_to_identical_result(synthetic_tensors, tmp_path: Path) -> None:
    params = RunParams(epochs=4, hidden_sizes=[32], batch_size=64, seed=3, dropout=0.2)
    uninterrupted = train_model(synthetic_tensors, params, CPU, tmp_path / "a" / "checkpoint.pt")
    checkpoint = tmp_path / "b" / "checkpoint.pt"
    with pytest.raises(_Crash):
        train_model(synthetic_tensors, params, CPU, checkpoint, on_epoch=_crash_at(2))
    resumed = train_model(synthetic_tensors, params, CPU, checkpoint)
    assert resumed.resumed_from_epoch == 2
    pd.testing.assert_frame_equal(_history_frame(resumed), _history_frame(uninterrupted), check_exact=True)
    for name, tensor in uninterrupted.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name
    # resume=False starts over even with a checkpoint present.
    fresh = train_model(synthetic_tensors, params.model_copy(update={"resume": False, "epochs": 4}), CPU, checkpoint)
    assert fresh.resumed_from_epoch == 0


def test_checkpoint_of_other_parameters_is_refused(synthetic_tensors, tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint.pt"
    first = RunParams(epochs=3, hidden_sizes=[32], batch_size=64, run_name="shared-name")
    with pytest.raises(_Crash):
        train_model(synthetic_tensors, first, CPU, checkpoint, on_epoch=_crash_at(1))
    saved = checkpoint.read_bytes()
    other = first.model_copy(update={"lr": 0.05, "batch_size": 32})
    with pytest.raises(TrainingError, match=r"written with other parameters \(differing: batch_size, lr\); refusing"):
        train_model(synthetic_tensors, other, CPU, checkpoint)
    assert checkpoint.read_bytes() == saved, "the refused checkpoint was modified"
    # Where files go does not matter: a different output folder or promotion margin may resume.
    moved = first.model_copy(update={"promotion_margin": 0.5})
    assert train_model(synthetic_tensors, moved, CPU, checkpoint).resumed_from_epoch == 1


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_half_written_checkpoint_is_never_trusted(damage: str, synthetic_tensors, tmp_path: Path) -> None:
    params = RunParams(epochs=2, hidden_sizes=[16], batch_size=64)
    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(_Crash):
        train_model(synthetic_tensors, params, CPU, checkpoint, on_epoch=_crash_at(1))
    data = checkpoint.read_bytes()
    checkpoint.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": os.urandom(512)}[damage])
    with pytest.raises(TrainingError, match=rf"(?s){checkpoint.name}: unreadable checkpoint .*--no-resume"):
        train_model(synthetic_tensors, params, CPU, checkpoint)


def test_a_checkpoint_is_not_resumed_on_other_data(tmp_path: Path) -> None:
    """The checkpoint folder is tied to the prepared data it trains on; resuming on other data is refused with both
    ways out named, and starting afresh (resume off) takes the folder over."""
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    claim_checkpoint_data(folder, "mnist-aaaa-val5000-seed0.safetensors", resume=True)
    (folder / CHECKPOINT_FILE).write_bytes(b"epochs of training")
    claim_checkpoint_data(folder, "mnist-aaaa-val5000-seed0.safetensors", resume=True)  # the same data: resumes
    with pytest.raises(TrainingError, match="trained on other data.*--no-resume.*--run-name NAME"):
        claim_checkpoint_data(folder, "mnist-bbbb-val5000-seed0.safetensors", resume=True)
    claim_checkpoint_data(folder, "mnist-bbbb-val5000-seed0.safetensors", resume=False)
    claim_checkpoint_data(folder, "mnist-bbbb-val5000-seed0.safetensors", resume=True)
