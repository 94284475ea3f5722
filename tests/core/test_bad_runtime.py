"""Runtime failures: missing device, divergence, unwritable folders, a full disk, and two runs at once."""

import errno
import importlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

import mnist_core.data.download as download_module
import mnist_core.files as files_module
from launch.cli import train as main
from mnist_core.config import RunParams
from mnist_core.data.download import download_dataset
from mnist_core.data.prepare import load_prepared, prepare_dataset
from mnist_core.errors import DeviceError, DownloadError, StorageError, TrainingError
from mnist_core.export.run_folder import export_run, new_run_id
from mnist_core.layout import CARD_FILE, ONNX_FILE, WEIGHTS_FILE
from mnist_core.preflight import ensure_writable_dir, preflight
from mnist_core.records import Downloaded
from mnist_core.training.checkpoint import checkpoint_dir, load_checkpoint
from mnist_core.training.device import resolve_device
from mnist_core.training.loop import train_model
from mnist_core.training.model import MLP, load_weights
from tests.support.records import make_card, make_evaluation, make_history, make_test_split
from tests.support.synthetic import assert_no_partial_files, snapshot

CPU = torch.device("cpu")
needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when CUDA is missing")
# No outlier exposure: these runs fail on purpose, and the less each epoch does, the sooner they do.
FAST = ["--epochs", "1", "--hidden-sizes", "32", "--batch-size", "512", "--outlier-exposure", "0"]


def disk_full(*_: Any, **__: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def synthetic_data(synthetic_dataset, tmp_path: Path) -> tuple[Downloaded, Path]:
    """(download result, cache folder) of the small synthetic dataset."""
    name, mirror, _ = synthetic_dataset
    cache = tmp_path / "cache"
    return download_dataset(name, cache, [str(mirror)]), cache


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit status and the CLI's own message (Prefect's log of a failed task, traceback included, comes before)."""
    code = main(args)
    err = capsys.readouterr().err
    return code, err[err.index("mnist: error:") :] if "mnist: error:" in err else err


# --- device -----------------------------------------------------------------------------------------------------------


@needs_no_gpu
@pytest.mark.parametrize("device", ["cuda", "cuda:1"], ids=["device-default-gpu", "device-gpu-1"])
def test_cuda_without_gpu_is_refused(device: str, tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match=rf"device='{device}' but no CUDA GPU is available.*--device cpu"):
        resolve_device(device)
    params = RunParams(device=device, output_dir=tmp_path / "runs", data_dir=tmp_path / "data")
    with pytest.raises(DeviceError):
        preflight(params)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


def test_a_device_index_torch_cannot_parse_is_one_line(tmp_path: Path, capsys) -> None:
    """Found by a new user: `--device cuda:99999999999999999999` passed the flag check, then a 22-line traceback."""
    params = RunParams(device="cuda:99999999999999999999", output_dir=tmp_path / "runs", data_dir=tmp_path / "data")
    with pytest.raises(DeviceError, match=r"Could not parse device index .*; use --device cpu or --device auto"):
        preflight(params)


@needs_no_gpu
def test_a_sweep_for_a_missing_gpu_fails_before_its_server_starts(tmp_path: Path, capsys) -> None:
    """Found by a new user: `mnist sweep` with `"device": "cuda"` failed only after its Prefect server (10 s)."""
    from launch.runs import run_sweep
    from mnist_core.sweep import SweepParams

    base = RunParams(device="cuda", output_dir=tmp_path / "runs", data_dir=tmp_path / "data")
    started = time.monotonic()
    assert run_sweep(SweepParams(base=base, grid={"lr": [0.1, 0.2]})) == 1
    assert time.monotonic() - started < 5
    error = capsys.readouterr().err.strip()
    assert error.startswith("mnist-sweep: error: device='cuda' but no CUDA GPU is available") and "\n" not in error
    assert not (tmp_path / "runs").exists()


@needs_no_gpu
def test_bf16_without_a_gpu_is_refused_before_any_work(tmp_path: Path) -> None:
    params = RunParams(device="auto", precision="bf16", output_dir=tmp_path / "runs", data_dir=tmp_path / "data")
    with pytest.raises(TrainingError, match="precision='bf16' needs a CUDA GPU with bf16 support; device is cpu"):
        preflight(params)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


@needs_no_gpu
@pytest.mark.slow
def test_cuda_without_gpu_from_cli(prefect_server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(
        ["--device", "cuda", "--data-dir", str(tmp_path / "d"), "--output-dir", str(tmp_path / "o")], capsys
    )
    assert code == 1
    assert "mnist: error: device='cuda' but no CUDA GPU is available" in err and "Traceback" not in err
    assert not (tmp_path / "d").exists() and not (tmp_path / "o").exists(), "work started before the device check"


@pytest.mark.slow
def test_flow_checks_folders_and_device_before_any_work(prefect_server, tmp_path: Path) -> None:
    """The flow runs the same pre-flight checks itself (deployments call it without main())."""
    from flows.mnist import mnist

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match=r"output_dir='.*file/runs': cannot create folder"):
        mnist(RunParams(data_dir=tmp_path / "data", output_dir=blocker / "runs"))
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError):
            mnist(RunParams(device="cuda", data_dir=tmp_path / "d2", output_dir=tmp_path / "o2"))
        assert not (tmp_path / "d2").exists() and not (tmp_path / "o2").exists()


# --- divergence -------------------------------------------------------------------------------------------------------


def test_diverging_learning_rate_stops_with_clear_error(
    synthetic_tensors: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    # Without the gradient clipping that keeps the default recipe finite (a safety net this test goes around).
    params = RunParams(lr=10, momentum=0.99, schedule="none", label_smoothing=0.0, epochs=3, seed=0, clip_grad_norm=0.0)
    checkpoint = tmp_path / "ckpt" / "checkpoint.pt"
    with pytest.raises(TrainingError, match=r"loss became non-finite in epoch (\d+) .* with lr=10\.0") as caught:
        train_model(synthetic_tensors, params, CPU, checkpoint)
    failed_epoch = int(str(caught.value).split("epoch ")[1].split()[0])
    # The diverged epoch is never checkpointed: what is on disk is the last finite state (or nothing).
    if failed_epoch == 1:
        assert not checkpoint.exists()
    else:
        payload = load_checkpoint(checkpoint, params)
        assert payload["epoch"] == failed_epoch - 1
        assert all(torch.isfinite(t).all() for t in payload["model"].values())
    assert_no_partial_files(tmp_path)


@pytest.mark.slow
def test_diverging_learning_rate_from_cli(
    prefect_server,
    mnist_data_dir: Path,
    mnist_mirror: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The module, not the task: `tasks.train` is the Task object re-exported by tasks/__init__.py.
    train_module = importlib.import_module("tasks.train")
    real_load = train_module.load_prepared

    def first_2048_training_images(path: Path, device: Any) -> dict[str, torch.Tensor]:
        # A full MNIST epoch at batch 32 takes ~40 s on a busy 2-core machine; the error path is the same.
        data = real_load(path, device)
        return {**data, "train_images": data["train_images"][:2048], "train_labels": data["train_labels"][:2048]}

    monkeypatch.setattr(train_module, "load_prepared", first_2048_training_images)
    output = tmp_path / "runs"
    args = ["--data-dir", str(mnist_data_dir), "--mirror", str(mnist_mirror), "--output-dir", str(output), *FAST]
    code, err = run_cli([*args, "--lr", "10", "--clip-grad-norm", "0", "--momentum", "0.99", "--no-nesterov",
                         "--schedule", "none", "--batch-size", "32", "--label-smoothing", "0", "--weight-decay", "0",
                         "--hidden-sizes", "128", "64"], capsys)  # fmt: skip
    assert code == 1
    assert "mnist: error: loss became non-finite in epoch 1" in err and "lr=10.0" in err
    assert "Traceback" not in err
    assert [p.name for p in output.iterdir()] in ([], [".checkpoints"]), "a run folder was exported for a failed run"


# --- folders that cannot be written -----------------------------------------------------------------------------------


def test_output_dir_under_a_regular_file(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("precious")
    with pytest.raises(StorageError, match=r"output_dir='.*not-a-folder/runs': cannot create folder"):
        ensure_writable_dir(blocker / "runs", "output_dir")
    with pytest.raises(StorageError, match=r"data_dir='.*not-a-folder': .* exists but is not a folder"):
        ensure_writable_dir(blocker, "data_dir")
    assert blocker.read_text() == "precious"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits; the variant above covers root")
def test_read_only_output_dir(tmp_path: Path) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o500)
    try:
        with pytest.raises(StorageError, match=r"output_dir=.*read-only.*is not writable \(Permission denied\)"):
            ensure_writable_dir(folder, "output_dir")
    finally:
        folder.chmod(0o700)


@pytest.mark.slow
def test_unwritable_output_dir_from_cli(
    prefect_server, mnist_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    data_before = snapshot(mnist_data_dir)
    code, err = run_cli(["--data-dir", str(mnist_data_dir), "--output-dir", str(blocker / "runs"), *FAST], capsys)
    assert code == 1
    assert f"mnist: error: output_dir='{blocker / 'runs'}'" in err and "Traceback" not in err
    assert snapshot(mnist_data_dir) == data_before
    assert blocker.read_text() == "x"


# --- a full disk ------------------------------------------------------------------------------------------------------


def test_disk_full_while_caching_prepared_data(synthetic_data, monkeypatch: pytest.MonkeyPatch) -> None:
    downloaded, cache = synthetic_data
    previous = prepare_dataset(downloaded, cache, val_size=200, seed=0).path
    before = snapshot(cache)

    def full_at_flush(descriptor: int) -> None:
        # The temp file already holds (part of) the data: file systems with delayed allocation report ENOSPC here.
        disk_full()

    monkeypatch.setattr(files_module.os, "fsync", full_at_flush)
    with pytest.raises(StorageError, match=r"synthetic-.*-val200-seed1\.safetensors: could not write prepared data "
                                           r"\(\[Errno 28\] No space left on device\)"):  # fmt: skip
        prepare_dataset(downloaded, cache, val_size=200, seed=1)
    assert snapshot(cache) == before, "the cache changed although the write failed"
    assert load_prepared(previous)["train_images"].shape[1:] == (28, 28)
    assert_no_partial_files(cache)


def test_disk_full_while_downloading(synthetic_dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name, mirror, _ = synthetic_dataset
    cache = tmp_path / "cache"
    download_dataset(name, cache, [str(mirror)])
    (cache / "raw" / name / "t10k-labels-idx1-ubyte.gz").unlink()  # one file still to fetch
    before = snapshot(cache)

    def half_then_full(source, target, progress) -> None:
        target.write(source.read(100))
        disk_full()

    monkeypatch.setattr(download_module, "_copy_limited", half_then_full)
    with pytest.raises(DownloadError, match=r"(?s)t10k-labels-idx1-ubyte\.gz.*OSError: \[Errno 28\] No space left"):
        download_dataset(name, cache, [str(mirror)])
    assert snapshot(cache) == before
    assert_no_partial_files(cache)


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(
    synthetic_tensors: dict[str, torch.Tensor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = RunParams(epochs=3, hidden_sizes=[32], batch_size=64, seed=0)
    checkpoint = tmp_path / "ckpt" / "checkpoint.pt"
    real_save = torch.save

    def save_half_then_fail(obj: Any, stream: Any, *args: Any, **kwargs: Any) -> None:
        stream.write(b"PK\x03\x04 half a zip")
        disk_full()

    def fill_disk_after_first_epoch(stats) -> None:
        if stats.epoch == 1:
            monkeypatch.setattr(torch, "save", save_half_then_fail)

    with pytest.raises(StorageError, match="No space left on device") as error:
        train_model(synthetic_tensors, params, CPU, checkpoint, on_epoch=fill_disk_after_first_epoch)
    assert str(checkpoint) in str(error.value) and "previous one is intact" in str(error.value)
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(checkpoint, params)["epoch"] == 1
    assert_no_partial_files(tmp_path)
    # Space freed: the next attempt picks up where the last complete checkpoint left off.
    resumed = train_model(synthetic_tensors, params, CPU, checkpoint)
    assert resumed.resumed_from_epoch == 1 and len(resumed.history) == 3


def _export(root: Path, metrics_rows: int = 2, torch_export: bool = False) -> Path:
    params = RunParams()
    card = make_card(new_run_id(params.training_digest()), epochs=metrics_rows)
    history, evaluation, test_split = make_history(metrics_rows), make_evaluation(), make_test_split()
    return export_run(root, MLP([8]), card, history, evaluation, test_split, torch_export).run_dir


def test_disk_full_while_exporting_leaves_earlier_runs_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "runs"
    earlier = _export(root)
    before = snapshot(root)
    # The model files are written by then: the failure hits a half-filled run folder.
    monkeypatch.setattr(pd.DataFrame, "to_csv", disk_full)
    with pytest.raises(
        StorageError, match=r"could not write the run folder .*No space left on device.*nothing was left"
    ):
        _export(root)
    assert snapshot(root) == before
    assert sorted(p.name for p in root.iterdir()) == [earlier.name]
    assert load_weights(earlier / WEIGHTS_FILE).hidden_sizes == [8]


# --- two runs at once -------------------------------------------------------------------------------------------------


def _in_parallel(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run work(i) in `count` threads released together; re-raise the first failure."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def target(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as error:  # noqa: BLE001 - reported to the test below
            errors.append(error)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    if errors:
        raise errors[0]
    return results


@pytest.mark.slow  # four real exports at once: ~6 s, the longest of the quick layer
def test_four_exports_to_the_same_root_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four runs exporting into one root together: four whole run folders under distinct names, and the model
    traced one at a time (Dynamo's state is process-wide; torch.jit.script, before it, raced with itself on CI)."""
    original_export = torch.export.export
    active, most_at_once = [0], [0]
    counter_lock = threading.Lock()

    def slow_export(*args: Any, **kwargs: Any) -> Any:
        with counter_lock:
            active[0] += 1
            most_at_once[0] = max(most_at_once[0], active[0])
        time.sleep(0.05)  # wide enough that unserialized calls would overlap
        try:
            return original_export(*args, **kwargs)
        finally:
            with counter_lock:
                active[0] -= 1

    monkeypatch.setattr(torch.export, "export", slow_export)
    root = tmp_path / "runs"
    run_dirs = _in_parallel(4, lambda i: _export(root, metrics_rows=i + 1, torch_export=True))  # .pt2: opt-in
    assert most_at_once[0] == 1
    assert len({d.name for d in run_dirs}) == 4
    assert sorted(p.name for p in root.iterdir()) == sorted(d.name for d in run_dirs)
    for i, run_dir in enumerate(run_dirs):
        card = json.loads((run_dir / CARD_FILE).read_text())
        assert card["run_id"] == run_dir.name
        assert len(pd.read_csv(run_dir / "metrics.csv")) == i + 1
        assert (run_dir / ONNX_FILE).is_file()
        load_weights(run_dir / WEIGHTS_FILE)


def test_two_runs_share_a_data_cache_at_once(synthetic_dataset, tmp_path: Path) -> None:
    name, mirror, sha256s = synthetic_dataset
    cache = tmp_path / "cache"

    def run(_: int) -> Path:
        downloaded = download_dataset(name, cache, [str(mirror)])
        return prepare_dataset(downloaded, cache, val_size=200, seed=0).path

    first, second = _in_parallel(2, run)
    assert first == second
    tensors = load_prepared(first)
    assert len(tensors["train_images"]) == 1000 and len(tensors["val_images"]) == 200
    assert sorted(p.name for p in (cache / "raw" / name).iterdir()) == sorted(
        download_module.DATASETS[name].files[role][0] for role in sha256s
    )
    assert_no_partial_files(cache)


def test_two_trainings_in_the_same_output_root_at_once(
    synthetic_tensors: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    runs = [RunParams(output_dir=tmp_path / "runs", epochs=2, hidden_sizes=[16], seed=s) for s in (1, 2)]
    paths = [checkpoint_dir(params) / "checkpoint.pt" for params in runs]
    assert paths[0] != paths[1]
    results = _in_parallel(2, lambda i: train_model(synthetic_tensors, runs[i], CPU, paths[i]))
    for params, path, result in zip(runs, paths, results, strict=True):
        payload = load_checkpoint(path, params)  # each checkpoint belongs to its own parameters
        assert payload["epoch"] == 2
        assert [e["val_loss"] for e in payload["history"]] == [e.val_loss for e in result.history]
