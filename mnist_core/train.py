"""The training loop: data resident on the device as uint8, shuffled with randperm, sliced into batches."""

import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnist_core.config import RunParams
from mnist_core.errors import TrainingError
from mnist_core.model import MLP

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
EVAL_CHUNK = 10_000


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float
    samples_per_s: float


@dataclass
class TrainResult:
    model: MLP  # holds the best-validation weights
    history: list[EpochStats]
    best_epoch: int
    resumed_from_epoch: int = 0
    train_seconds: float = 0.0
    precision: str = "fp32"
    step_kind: str = "eager"
    extra: dict[str, Any] = field(default_factory=dict)


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast only on CUDA GPUs that support it; on CPU it is slower and buys nothing here."""
    if precision == "fp32":
        return False
    supported = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "bf16" and not supported:
        raise TrainingError(f"precision='bf16' needs a CUDA GPU with bf16 support; device is {device}")
    return supported


def build_optimizer(model: nn.Module, params: RunParams) -> torch.optim.Optimizer:
    if params.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=params.lr,
            momentum=params.momentum,
            nesterov=params.nesterov and params.momentum > 0,
            weight_decay=params.weight_decay,
        )
    optimizer_class = torch.optim.Adam if params.optimizer == "adam" else torch.optim.AdamW
    return optimizer_class(
        model.parameters(), lr=params.lr, betas=(params.momentum, 0.999), weight_decay=params.weight_decay
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, params: RunParams, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    total_steps = params.epochs * steps_per_epoch
    if params.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=params.lr, total_steps=total_steps)
    if params.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return None


@torch.no_grad()
def evaluate_split(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, bf16: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed loss, number correct (device tensors, no sync) and predictions over a whole split."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=images.device)
    predictions = []
    for start in range(0, len(images), EVAL_CHUNK):
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(images[start : start + EVAL_CHUNK]).float()
        target = labels[start : start + EVAL_CHUNK].long()
        loss_sum += nn.functional.cross_entropy(logits, target, reduction="sum")
        predictions.append(logits.argmax(1))
    model.train(was_training)
    predicted = torch.cat(predictions)
    return loss_sum, (predicted == labels.long()).sum(), predicted


def _rng_state(shuffle: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], shuffle: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    shuffle.set_state(state["shuffle"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """torch.save to a temp file, fsync, then os.replace: a crash leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            torch.save(payload, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    finally:
        Path(temp_name).unlink(missing_ok=True)


def load_checkpoint(path: Path, params: RunParams) -> dict[str, Any]:
    """A checkpoint written for exactly these training parameters (weights_only: nothing is unpickled)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise TrainingError(f"{path}: unreadable checkpoint ({error}); delete it or pass --no-resume") from error
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path}: checkpoint format {payload.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    if payload.get("training_digest") != params.training_digest():
        saved = payload.get("params", {})
        current = params.model_dump(mode="json")
        differing = sorted(k for k in current if k in saved and saved[k] != current[k])
        raise TrainingError(
            f"{path}: checkpoint was written with other parameters (differing: {', '.join(differing) or 'unknown'}); "
            "refusing to mix runs. Use the original parameters, another --run-name, or --no-resume"
        )
    return payload


def _to_device_state(state: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {name: tensor.to(device) for name, tensor in state.items()}


def train_model(
    data: dict[str, torch.Tensor],
    params: RunParams,
    device: torch.device,
    checkpoint_path: Path | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> TrainResult:
    """Train the MLP on `data` (uint8 tensors already on `device`); keep the best-validation weights."""
    train_x, train_y = data["train_images"], data["train_labels"].long()
    val_x, val_y = data["val_images"], data["val_labels"]
    num_train = len(train_x)
    batch_size = min(params.batch_size, num_train)
    steps_per_epoch = math.ceil(num_train / batch_size)
    bf16 = use_bf16(params.precision, device)

    torch.manual_seed(params.seed)
    model = MLP(params.hidden_sizes, params.dropout).to(device)
    optimizer = build_optimizer(model, params)
    scheduler = build_scheduler(optimizer, params, steps_per_epoch)
    criterion = nn.CrossEntropyLoss(label_smoothing=params.label_smoothing)
    shuffle = torch.Generator(device=device).manual_seed(params.seed)

    history: list[EpochStats] = []
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    best_epoch, best_key = 0, (-1.0, -math.inf)
    start_epoch = 0
    if checkpoint_path is not None and params.resume and checkpoint_path.is_file():
        payload = load_checkpoint(checkpoint_path, params)
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(payload["scheduler"])
        best_state = _to_device_state(payload["best_state"], device)
        best_epoch = payload["best_epoch"]
        best_key = tuple(payload["best_key"])
        history = [EpochStats(**entry) for entry in payload["history"]]
        start_epoch = payload["epoch"]
        _set_rng_state(payload["rng"], shuffle, device)
        log.info("resumed from %s after epoch %d", checkpoint_path, start_epoch)

    def train_step(batch_x: torch.Tensor, batch_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(batch_x)
            loss = criterion(logits.float(), batch_y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        return loss.detach(), (logits.argmax(1) == batch_y).sum()

    model.train()
    train_seconds = sum(stats.seconds for stats in history)
    for epoch in range(start_epoch, params.epochs):
        started = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        order = torch.randperm(num_train, device=device, generator=shuffle)
        for step in range(steps_per_epoch):
            index = order[step * batch_size : (step + 1) * batch_size]
            loss, batch_correct = train_step(train_x[index], train_y[index])
            loss_sum += loss * len(index)
            correct += batch_correct
        val_loss_sum, val_correct, _ = evaluate_split(model, val_x, val_y, bf16)
        # The epoch boundary is the only host-device sync: one transfer of four scalars.
        train_loss, train_correct, val_loss, val_right = torch.stack(
            [loss_sum, correct.float(), val_loss_sum, val_correct.float()]
        ).tolist()
        seconds = time.perf_counter() - started
        train_loss /= num_train
        if not math.isfinite(train_loss) or not math.isfinite(val_loss):
            raise TrainingError(
                f"loss became non-finite in epoch {epoch + 1} (train loss {train_loss}) with lr={params.lr}; "
                "training diverged: try a lower learning rate"
            )
        stats = EpochStats(
            epoch=epoch + 1,
            train_loss=train_loss,
            train_accuracy=train_correct / num_train,
            val_loss=val_loss / len(val_x),
            val_accuracy=val_right / len(val_x),
            lr=optimizer.param_groups[0]["lr"],
            seconds=seconds,
            samples_per_s=num_train / seconds,
        )
        history.append(stats)
        train_seconds += seconds
        if (stats.val_accuracy, -stats.val_loss) > best_key:
            best_key = (stats.val_accuracy, -stats.val_loss)
            best_epoch = stats.epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if checkpoint_path is not None:
            save_checkpoint(
                checkpoint_path,
                {
                    "format": CHECKPOINT_FORMAT,
                    "params": params.model_dump(mode="json"),
                    "training_digest": params.training_digest(),
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "best_state": best_state,
                    "best_epoch": best_epoch,
                    "best_key": list(best_key),
                    "history": [asdict(entry) for entry in history],
                    "rng": _rng_state(shuffle, device),
                    "torch_version": torch.__version__,
                },
            )
        log.info(
            "epoch %d/%d: train loss %.4f, val loss %.4f, val acc %.4f, %.2fs, %.0f samples/s",
            stats.epoch, params.epochs, stats.train_loss, stats.val_loss, stats.val_accuracy,
            stats.seconds, stats.samples_per_s,
        )  # fmt: skip
        if on_epoch is not None:
            on_epoch(stats)

    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(
        model=model,
        history=history,
        best_epoch=best_epoch,
        resumed_from_epoch=start_epoch,
        train_seconds=train_seconds,
        precision="bf16" if bf16 else "fp32",
    )
