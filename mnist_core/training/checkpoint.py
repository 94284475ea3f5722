"""A run's checkpoint: where it lives, who may use it, and how it is written and read back.

The checkpoint folder (`<output_dir>/.checkpoints/<name>/`) holds the last epoch's checkpoint and the files the
run has produced so far (best weights, the export marker) until the run has completed, so a rerun resumes.
"""

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mnist_core.config import NOT_IN_TRAINING_DIGEST, RunParams
from mnist_core.errors import StorageError, TrainingError
from mnist_core.files import atomic_write, exclusive_lock

# 2: the learning rate is a tensor in the optimizer state and momentum no longer cycles with onecycle.
CHECKPOINT_FORMAT = 2
CHECKPOINT_FILE = "checkpoint.pt"


def checkpoint_dir(params: RunParams) -> Path:
    """Where a run's checkpoint and intermediate files live until the run completes, so a rerun can resume."""
    return Path(params.output_dir).expanduser().resolve() / ".checkpoints" / params.checkpoint_name()


@contextlib.contextmanager
def checkpoint_lock(params: RunParams) -> Iterator[Path]:
    """Hold the run's checkpoint folder exclusively; yields the folder.

    Two runs with the same parameters (or run name) in one output root would otherwise resume from, and delete,
    each other's checkpoint. The kernel drops the lock if the process dies, so a killed run never blocks its own
    restart."""
    folder = checkpoint_dir(params)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(exclusive_lock(folder.parent / f"{folder.name}.lock", blocking=False))
        except BlockingIOError:
            raise TrainingError(
                f"another run is using the checkpoint {folder} (same parameters or run name, same output folder); "
                "wait for it to finish, or pass another --run-name or --output-dir"
            ) from None
        yield folder


DATA_FILE = "data.json"


def claim_checkpoint_data(folder: Path, prepared_file: str, resume: bool) -> None:
    """Tie the checkpoint folder to the prepared data it trains on (the file's name keys its content, the extra
    images included): resuming on other data would mix two trainings, so it is refused, naming both."""
    record = folder / DATA_FILE
    if resume and (folder / CHECKPOINT_FILE).is_file() and record.is_file():
        earlier = json.loads(record.read_text(encoding="utf-8")).get("prepared")
        if earlier != prepared_file:
            raise TrainingError(
                f"{folder}: the checkpoint was trained on other data ({earlier}, now {prepared_file}: the dataset or "
                "the extra images changed); refusing to mix them. Pass --no-resume to start afresh (its checkpoint "
                "is then replaced), or --run-name NAME to train apart from it"
            )
    atomic_write(record, lambda stream: stream.write(json.dumps({"prepared": prepared_file}).encode()))


def discard_checkpoint(params: RunParams) -> None:
    """Remove the run's checkpoint folder: call it only once the run has completed, holding `checkpoint_lock`."""
    shutil.rmtree(checkpoint_dir(params), ignore_errors=True)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Written atomically: a crash or a full disk leaves the previous checkpoint intact."""
    try:
        atomic_write(path, lambda stream: torch.save(payload, stream))
    except OSError as error:
        raise StorageError(f"{path}: could not write the checkpoint ({error}); the previous one is intact") from error


def load_checkpoint(path: Path, params: RunParams) -> dict[str, Any]:
    """A checkpoint written for exactly these training parameters (weights_only: nothing is unpickled)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        # torch's refusal message goes on to advise weights_only=False, which is exactly what must not happen here.
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        if "Weights only load failed" in detail:
            detail = "it holds objects other than tensors and plain values, and nothing is ever unpickled"
        raise TrainingError(f"{path}: unreadable checkpoint ({detail}); delete it or pass --no-resume") from error
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path}: checkpoint format {payload.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    if payload.get("training_digest") != params.training_digest():
        saved = payload.get("params", {})
        current = params.model_dump(mode="json")
        differing = sorted(
            k for k in current if k in saved and k not in NOT_IN_TRAINING_DIGEST and saved[k] != current[k]
        )
        raise TrainingError(
            f"{path}: checkpoint was written with other parameters (differing: {', '.join(differing) or 'unknown'}); "
            "refusing to mix runs. Use the original parameters, another --run-name, or --no-resume"
        )
    return payload


def rng_state(shuffle: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], shuffle: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    shuffle.set_state(state["shuffle"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
