"""The training steps, each feeding one epoch's batches through forward, loss, backward and the optimizer.

Three kinds, chosen (and built) by train.py: "plain" (the CPU), "fixed_shape" (graph-safe, run eagerly) and
"cuda_graph" (the fixed-shape step captured once as a CUDA graph and replayed).

One `FixedShapeStep` reads its batch through static buffers (an index vector and a per-sample weight vector),
so every call has the same shapes, allocates the same tensors and never syncs with the host. The same object
runs eagerly on the CPU (where the tests exercise it) and is captured once into a CUDA graph on a GPU.

The ragged last batch (55 000 training images at batch 256 leave 216) is padded to the full batch size with
indices from the start of the epoch's permutation and given weight 0: the loss is the weighted mean over the
real samples, so its gradient, and the optimizer step, equal those of the 216-sample batch. No sample is
dropped or seen twice, one graph serves every step, and the padding costs 40 wasted rows once per epoch.
"""

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional

from mnist_core.training.backprop import loss_and_gradients

StepKind = Literal["plain", "fixed_shape", "cuda_graph"]
# Turns a fixed-shape step into the callable replayed each step (capture_cuda_graph; the benchmark's torch.compile).
Capture = Callable[["FixedShapeStep"], Callable[[], None]]


def epoch_batches(order: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The epoch's permutation as a (steps, batch_size) index table, the tail padded from its start."""
    steps = math.ceil(len(order) / batch_size)
    padding = steps * batch_size - len(order)
    # Any valid index works as padding (its weight is 0); the permutation's head keeps gathers in bounds.
    padded = torch.cat([order, order[:padding]]) if padding else order
    return padded.view(steps, batch_size)


def batch_weights(num_samples: int, batch_size: int, device: torch.device) -> torch.Tensor:
    """(steps, batch_size) weights: 1 for real samples, 0 for the padding of the last batch."""
    steps = math.ceil(num_samples / batch_size)
    weights = torch.ones(steps * batch_size, device=device)
    weights[num_samples:] = 0
    return weights.view(steps, batch_size)


@dataclass(eq=False)
class _Step:
    """What both steps share: the model, optimizer and data they train on, and the epoch's totals (`loss_sum`,
    the sum of per-sample losses, and `correct`), accumulated on the device; the caller zeroes them.

    `train_epoch(order, after_step)` runs one step per batch of the permutation `order`, calling `after_step`
    (the scheduler's step) after each."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    images: torch.Tensor
    labels: torch.Tensor
    batch_size: int
    label_smoothing: float = 0.0
    bf16: bool = False
    written_out: bool = False  # gradients from backprop.py instead of autograd (not with bf16)
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None  # uint8 batch -> augmented float batch (augment.py)
    max_grad_norm: float = 0.0  # clip the gradients' global norm to this before each update; 0: never
    # Outlier exposure: `outlier_batch` images drawn at random from `outliers` (uint8, not digits, on the device)
    # join each batch, trained towards the uniform distribution with the weight `outlier_weight` (backprop.py).
    outliers: torch.Tensor | None = None
    outlier_batch: int = 0
    outlier_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.written_out and self.bf16:
            raise ValueError("bf16 autocast needs autograd: written-out gradients are fp32 only")
        if self.outliers is None or len(self.outliers) == 0 or self.outlier_weight <= 0:
            self.outlier_batch = 0
        self.loss_sum = torch.zeros((), device=self.images.device)
        self.correct = torch.zeros((), dtype=torch.long, device=self.images.device)

    def reset_totals(self) -> None:
        self.loss_sum.zero_()
        self.correct.zero_()

    def _clip(self) -> None:
        """Scale the gradients down when their global norm exceeds `max_grad_norm`. No host sync (graph-safe); a
        norm below the limit multiplies by exactly 1.0, so a run that never reaches it is bit-identical to one
        without clipping."""
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm, foreach=True)

    def _batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The images (augmented, when on) and labels of the batch `index` names, the outliers appended after the
        images. Random draws from torch's generators only: graph-safe, and saved with a checkpoint."""
        # index_select, not images[index]: on the CPU, advanced indexing of a uint8 tensor is ~10x slower.
        batch_x = torch.index_select(self.images, 0, index)
        batch_y = torch.index_select(self.labels, 0, index)
        if self.outlier_batch:
            assert self.outliers is not None
            drawn = torch.randint(len(self.outliers), (self.outlier_batch,), device=self.outliers.device)
            batch_x = torch.cat([batch_x, torch.index_select(self.outliers, 0, drawn)])
        if self.augment is not None:
            batch_x = self.augment(batch_x)
        return batch_x, batch_y

    def _loss_and_gradients(
        self, batch_x: torch.Tensor, batch_y: torch.Tensor, weight: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The digits' summed loss (weighted by `weight`, if given) and their logits; the gradient of the mean
        loss (the weighted mean), plus the outliers' term, in each parameter's `.grad`. Written out, or through
        autograd under bf16."""
        outliers, outlier_weight = self.outlier_batch, self.outlier_weight
        if self.written_out:
            return loss_and_gradients(
                self.model, batch_x, batch_y, self.label_smoothing, weight, outliers, outlier_weight
            )
        # cache_enabled=False: autocast's weight-cast cache is not allowed inside CUDA graph capture.
        with torch.autocast(batch_x.device.type, dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False):
            all_logits = self.model(batch_x)
        self.optimizer.zero_grad(set_to_none=True)
        logits = all_logits[: len(batch_y)]
        # Cross-entropy to the uniform distribution: the mean over the classes of -log p.
        exposure = (
            -functional.log_softmax(all_logits[len(batch_y) :].float(), 1).mean(1).mean() * outlier_weight
            if outliers
            else 0.0
        )
        if weight is None:
            loss = functional.cross_entropy(logits.float(), batch_y, label_smoothing=self.label_smoothing)
            (loss + exposure).backward()
            return loss.detach() * len(batch_y), logits
        per_sample = functional.cross_entropy(
            logits.float(), batch_y, reduction="none", label_smoothing=self.label_smoothing
        )
        weighted = (per_sample * weight).sum()
        (weighted / weight.sum() + exposure).backward()
        return weighted.detach(), logits


@dataclass(eq=False)
class FixedShapeStep(_Step):
    """forward + loss + backward + optimizer step on the batch named by `index`, weighted by `weight`.

    Each step `load`s its index and weight rows, then calls `replay`: `run` itself (eager), or a CUDA graph
    captured from `run` (`capture_cuda_graph`).
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        device = self.images.device
        self.index = torch.zeros(self.batch_size, dtype=torch.long, device=device)
        self.weight = torch.ones(self.batch_size, device=device)
        self.weights = batch_weights(len(self.images), self.batch_size, device)
        self.replay: Callable[[], None] = self.run

    def train_epoch(self, order: torch.Tensor, after_step: Callable[[], None]) -> None:
        # Device-to-device copies into the static buffers and the scheduler's in-place fill_ of the tensor
        # learning rate: kernel launches only, nothing waits for the device.
        for index, weight in zip(epoch_batches(order, self.batch_size), self.weights, strict=True):
            self.load(index, weight)
            self.replay()
            after_step()

    def load(self, index: torch.Tensor, weight: torch.Tensor) -> None:
        # copy_ into the static buffers, never rebinding them: a captured graph reads these exact addresses.
        self.index.copy_(index)
        self.weight.copy_(weight)

    def run(self) -> None:
        batch_x, batch_y = self._batch(self.index)
        weighted, logits = self._loss_and_gradients(batch_x, batch_y, self.weight)
        self._clip()
        self.optimizer.step()
        self.loss_sum += weighted
        self.correct += ((logits.argmax(1) == batch_y) & (self.weight > 0)).sum()


@dataclass(eq=False)
class PlainStep(_Step):
    """The step where nothing is captured (the CPU): the batch is gathered as it comes, the ragged last batch
    is simply smaller, and no static buffers are copied. Measured ~10 % faster than `FixedShapeStep` run
    eagerly on this MLP at batch 64 on the CPU, where the matmuls themselves take most of the step."""

    def train_epoch(self, order: torch.Tensor, after_step: Callable[[], None]) -> None:
        for index in order.split(self.batch_size):
            self.run(index)
            after_step()

    def run(self, index: torch.Tensor) -> None:
        batch_x, batch_y = self._batch(index)
        loss_sum, logits = self._loss_and_gradients(batch_x, batch_y, None)
        self._clip()
        self.optimizer.step()
        self.loss_sum += loss_sum
        self.correct += (logits.argmax(1) == batch_y).sum()


def _state_tensors(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Every tensor a training step mutates, keyed stably (parameter position, not dict order)."""
    tensors = {f"model.{name}": tensor for name, tensor in model.state_dict(keep_vars=True).items()}
    for group_number, group in enumerate(optimizer.param_groups):
        for param_number, param in enumerate(group["params"]):
            for key, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optimizer.{group_number}.{param_number}.{key}"] = value
    return tensors


@contextlib.contextmanager
def state_restored(step: FixedShapeStep) -> Iterator[None]:
    """Whatever steps run inside leave the weights, optimizer state and totals as they were, in place.

    In place, because a captured graph refers to these very tensors. State created inside (e.g. Adam's moments
    on a fresh run) is zeroed, which is what the optimizer would have initialised it to.
    """
    model, optimizer = step.model, step.optimizer
    with torch.no_grad():
        before = {key: tensor.detach().clone() for key, tensor in _state_tensors(model, optimizer).items()}
    yield
    with torch.no_grad():
        for key, tensor in _state_tensors(model, optimizer).items():
            if key in before:
                tensor.copy_(before[key])
            else:
                tensor.zero_()
    step.reset_totals()


def capture_cuda_graph(step: FixedShapeStep, warmup_steps: int = 3) -> Callable[[], None]:
    """Capture `step.run` as a CUDA graph and return its replay; training state is left as it was before.

    Warm-up runs on a side stream first, as torch.cuda.graph requires, so that lazy optimizer state and
    autograd's buffers exist before capture.
    """
    with state_restored(step):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup_steps):
                step.run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step.run()
    return graph.replay
