"""The training loop: data resident on the device as uint8, shuffled with randperm, sliced into batches."""

import contextlib
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from mnist_core.config import NOT_IN_TRAINING_DIGEST, RunParams
from mnist_core.errors import StorageError, TrainingError
from mnist_core.files import atomic_write, exclusive_lock
from mnist_core.model import MLP
from mnist_core.steps import (
    FixedShapeStep,
    PlainStep,
    batch_weights,
    capture_cuda_graph,
    compile_step,
    epoch_batches,
)

log = logging.getLogger(__name__)

# 2: the learning rate is a tensor in the optimizer state and momentum no longer cycles with onecycle.
CHECKPOINT_FORMAT = 2
EVAL_CHUNK = 10_000
StepMode = Literal["auto", "plain", "eager", "cuda_graph", "compiled"]
# Intra-op threads while training on a CPU. This MLP's matrices are so small (a batch of 256 is ~0.1 GFLOP per
# step) that OpenMP's fork/join per operator costs more than a second thread gains; and on a shared machine a
# descheduled worker thread stalls every operator: 1 thread measured 1.4x faster idle and 10x faster under load
# than 2 on the project's 2-core machine.
CPU_TRAIN_THREADS = 1


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
    step_kind: str = "plain"
    extra: dict[str, Any] = field(default_factory=dict)


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast only on CUDA GPUs that support it; on CPU it is slower and buys nothing here."""
    if precision == "fp32":
        return False
    supported = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "bf16" and not supported:
        raise TrainingError(f"precision='bf16' needs a CUDA GPU with bf16 support; device is {device}")
    return supported


def build_optimizer(
    model: nn.Module, params: RunParams, device: torch.device, capturable: bool = False, plain: bool = False
) -> torch.optim.Optimizer:
    """The optimizer; `capturable` makes its step safe to capture in a CUDA graph; `plain` (the CPU's plain
    step) keeps PyTorch's default foreach SGD with a float learning rate, measured faster there for this model.

    A captured step bakes in every Python float it reads, so the learning rate, which the schedule changes
    each step, lives in a device tensor that the scheduler updates in place. SGD has no `capturable` flag:
    its fused kernel takes a tensor learning rate and keeps no step counter, so it is graph-safe as it is
    (the foreach path would call .item() on a tensor rate). CPU uses the same fused kernel, so the tests run
    the same update rule.
    """
    if params.optimizer == "sgd":
        fused = device.type in ("cpu", "cuda") and not plain
        return torch.optim.SGD(
            model.parameters(),
            lr=torch.tensor(params.lr, device=device) if fused else params.lr,
            momentum=params.momentum,
            nesterov=params.nesterov and params.momentum > 0,
            weight_decay=params.weight_decay,
            fused=fused,
        )
    optimizer_class = torch.optim.Adam if params.optimizer == "adam" else torch.optim.AdamW
    return optimizer_class(
        model.parameters(),
        lr=torch.tensor(params.lr, device=device) if capturable else params.lr,
        betas=(params.momentum, 0.999),
        weight_decay=params.weight_decay,
        capturable=capturable,
    )


def init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create SGD's momentum buffers as zeros up front.

    With dampening 0, momentum*0 + grad equals the first-step rule (buffer = grad), so nothing changes
    numerically; but every step, the first one included, now runs the same kernel with the same state,
    which a captured graph needs and which makes eager and graph steps identical.
    """
    if not isinstance(optimizer, torch.optim.SGD):
        return
    for group in optimizer.param_groups:
        if group["momentum"] == 0:
            continue
        for param in group["params"]:
            optimizer.state[param].setdefault("momentum_buffer", torch.zeros_like(param))


def pin_lr(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Keep a tensor learning rate a device tensor (load_state_dict replaces it with the checkpoint's CPU copy)."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor) and group["lr"].device != device:
            group["lr"] = group["lr"].to(device)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate as a float; for a CUDA tensor this waits for the device, so call it only at the epoch
    boundary, after the epoch's one sync."""
    return float(optimizer.param_groups[0]["lr"])


def build_scheduler(
    optimizer: torch.optim.Optimizer, params: RunParams, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    total_steps = params.epochs * steps_per_epoch
    if params.schedule == "onecycle":
        # cycle_momentum=False: a captured step bakes momentum in as a constant, so it must not change per step.
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=params.lr, total_steps=total_steps, cycle_momentum=False
        )
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


def checkpoint_dir(params: RunParams) -> Path:
    """Where a run's checkpoint and intermediate files live until export, so a rerun can resume."""
    return Path(params.output_dir).expanduser().resolve() / ".checkpoints" / params.checkpoint_name()


@contextlib.contextmanager
def checkpoint_lock(params: RunParams) -> Iterator[Path]:
    """Hold the run's checkpoint folder exclusively, and remove it once the run has completed.

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
        # Only a complete run gets here; after a failure the checkpoint stays for the rerun to resume from.
        shutil.rmtree(folder, ignore_errors=True)


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


def _to_device_state(state: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {name: tensor.to(device) for name, tensor in state.items()}


@contextlib.contextmanager
def training_threads(device: torch.device) -> Iterator[None]:
    """CPU_TRAIN_THREADS intra-op threads for the duration of CPU training, then the caller's setting again."""
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(min(CPU_TRAIN_THREADS, previous))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_model(
    data: dict[str, torch.Tensor],
    params: RunParams,
    device: torch.device,
    checkpoint_path: Path | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    step_mode: StepMode = "auto",
) -> TrainResult:
    """Train the MLP on `data` (uint8 tensors already on `device`); keep the best-validation weights.

    `step_mode` "auto" captures the fixed-shape step as a CUDA graph on CUDA when `params.cuda_graph` is set
    (else runs it "eager"), and uses the "plain" step elsewhere; "compiled" wraps the fixed-shape step in
    torch.compile(mode="reduce-overhead") (for the benchmark).
    """
    with training_threads(device):
        return _train_model(data, params, device, checkpoint_path, on_epoch, step_mode)


def _train_model(
    data: dict[str, torch.Tensor],
    params: RunParams,
    device: torch.device,
    checkpoint_path: Path | None,
    on_epoch: Callable[[EpochStats], None] | None,
    step_mode: StepMode,
) -> TrainResult:
    train_x, train_y = data["train_images"], data["train_labels"].long()
    val_x, val_y = data["val_images"], data["val_labels"]
    num_train = len(train_x)
    batch_size = min(params.batch_size, num_train)
    steps_per_epoch = math.ceil(num_train / batch_size)
    bf16 = use_bf16(params.precision, device)
    if step_mode == "auto" and device.type == "cuda":
        step_mode = "cuda_graph" if params.cuda_graph else "eager"
    elif step_mode == "auto":
        step_mode = "plain"
    if step_mode == "cuda_graph" and device.type != "cuda":
        raise TrainingError(f"step_mode='cuda_graph' needs a CUDA device; device is {device}")

    torch.manual_seed(params.seed)
    model = MLP(params.hidden_sizes, params.dropout).to(device)
    optimizer = build_optimizer(
        model, params, device, capturable=step_mode in ("cuda_graph", "compiled"), plain=step_mode == "plain"
    )
    init_optimizer_state(optimizer)
    scheduler = build_scheduler(optimizer, params, steps_per_epoch)
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
    pin_lr(optimizer, device)

    model.train()
    setup_started = time.perf_counter()
    if step_mode == "plain":
        step: PlainStep | FixedShapeStep = PlainStep(model, optimizer, train_x, train_y, params.label_smoothing, bf16)
    else:
        step = FixedShapeStep(model, optimizer, train_x, train_y, batch_size, params.label_smoothing, bf16)
        weights = batch_weights(num_train, batch_size, device)
        run_step: Callable[[], None] = step.run
        if start_epoch < params.epochs and step_mode == "cuda_graph":
            run_step = capture_cuda_graph(step)
        elif start_epoch < params.epochs and step_mode == "compiled":
            run_step = compile_step(step)
    # Warm-up and capture are set-up, not training: reported apart from train_seconds.
    setup_seconds = time.perf_counter() - setup_started

    training_cpu_threads = torch.get_num_threads()  # inside training_threads: what training really uses
    for epoch in range(start_epoch, params.epochs):
        started = time.perf_counter()
        order = torch.randperm(num_train, device=device, generator=shuffle)
        step.reset_totals()
        if isinstance(step, PlainStep):
            for index in order.split(batch_size):
                step.run(index)
                if scheduler is not None:
                    scheduler.step()
        else:
            # Device-to-device copies into the static buffers and the scheduler's in-place fill_ of the
            # tensor learning rate: kernel launches only, nothing waits for the device.
            for index, weight in zip(epoch_batches(order, batch_size), weights, strict=True):
                step.load(index, weight)
                run_step()
                if scheduler is not None:
                    scheduler.step()
        val_loss_sum, val_correct, _ = evaluate_split(model, val_x, val_y, bf16)
        # The epoch boundary is the only host-device sync: one transfer of four scalars.
        train_loss, train_correct, val_loss, val_right = torch.stack(
            [step.loss_sum, step.correct.float(), val_loss_sum, val_correct.float()]
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
            lr=current_lr(optimizer),
            seconds=seconds,
            samples_per_s=num_train / seconds,
        )
        history.append(stats)
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
                    "torch_version": str(torch.__version__),
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
        train_seconds=sum(stats.seconds for stats in history),
        precision="bf16" if bf16 else "fp32",
        step_kind=step_mode,
        extra={"setup_seconds": setup_seconds, "cpu_threads": training_cpu_threads},
    )
