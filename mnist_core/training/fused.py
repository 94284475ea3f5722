"""One whole training step of the MLP in a few Triton kernels: the fixed-shape step (steps.py) fused for a GPU.

`FusedStep` is a `FixedShapeStep` whose `run` computes what `loss_and_gradients` (backprop.py) followed by the
graph-safe SGD of optim.py computes, with these kernels (784-128-64-10: seven launches a step, one more, an
in-place `random_`, when outliers join the batch):

1. `_linear_kernel`, gathered: the batch's uint8 rows read through the index buffer (and the drawn outliers'),
   normalized as `MLP.normalize` does ((x / 255 - mean) / std, mean and std read from the model's buffers), times
   W1^T, plus the bias, ReLU. The float input is never written to memory.
2. `_linear_kernel`, plain, once per further hidden layer: GEMM, bias, ReLU.
3. `_logits_loss_kernel`: the last layer's GEMM and bias, log-softmax, the summed weighted loss and the count of
   correct argmaxes among rows of weight > 0 (added to the step's `loss_sum` and `correct`), the closed-form
   gradient in the logits (softmax minus the smoothed one-hot target, times weight / sum(weight); outlier rows
   p - 1/C times outlier_weight / outliers), and that gradient times the last weight matrix, gated by ReLU: the
   last hidden layer's gradient. The labels are gathered through the index buffer here too.
4. per layer, last to first: `_linear_kernel` in its gated form (gradient times W, zero where the layer's input
   was zero: ReLU's backward) for the layer below, then `_weight_grad_sgd_kernel`: g^T x, and in its epilogue
   the SGD update (weight decay, momentum buffer, Nesterov, lr read from the optimizer's device tensor) of the
   weight and of the bias (the program holding the first column tile sums g for it). For the first layer x is
   the uint8 batch gathered and normalized again, not a stored copy. The input gradient of a layer is computed
   before its update, since it needs the old weights.

No gradient is written to `.grad` and no optimizer code runs: the momentum buffers are the optimizer's own
(`optimizer.state[p]["momentum_buffer"]`), so checkpoints and `state_restored` see the same state as with the
unfused step. Fixed shapes, buffers allocated once, no host sync: `capture_cuda_graph` captures `run` unchanged.

Not fused, and why: the layers stay separate kernels (one row block holding all of a 784-128-64-10 forward
would leave most of a GPU idle at batch 64; worth measuring, not assumed); the loss sum and correct count are
added with atomics, so with more than one row block (`loss_rows` < batch + outliers) their float sum is not bitwise
reproducible. Not covered (`unsupported_reason`; the caller falls back to the existing step): bf16, Adam/AdamW
or any optimizer but SGD (dampening 0, not maximize, one parameter group, a tensor learning rate), dropout,
augmentation, gradient clipping, float images, and any model that is not the MLP of model.py. TF32 stays off
(input_precision="ieee"), so results match float32 autograd to rounding.

Importing this module needs triton but no GPU. Set TRITON_INTERPRET=1 before importing it to run the kernels on
CPU tensors with Triton's interpreter (the tests do, in a subprocess): the choice is made when the kernels are
decorated.
"""

from dataclasses import dataclass, field
from typing import Any

import torch
import triton
import triton.language as tl
from torch import nn

from mnist_core.training.backprop import linear_layers
from mnist_core.training.model import MLP
from mnist_core.training.steps import FixedShapeStep


@triton.jit
def _gathered_rows(
    images_ptr, outliers_ptr, index_ptr, drawn_ptr, mean_ptr, std_ptr, rows, cols, batch, total_rows, features,
    HAS_OUTLIERS: tl.constexpr,
):  # fmt: skip
    """The normalized float tile (rows x cols) of the batch: row r < batch is images[index[r]], the rest
    outliers[drawn[r - batch]]. Zero outside the batch and the features, so it can feed tl.dot as it is."""
    col_ok = cols < features
    is_digit = rows < batch
    source = tl.load(index_ptr + rows, mask=is_digit, other=0).to(tl.int64)
    pixels = tl.load(images_ptr + source[:, None] * features + cols[None, :], mask=is_digit[:, None] & col_ok[None, :],
                     other=0)  # fmt: skip
    if HAS_OUTLIERS:
        is_outlier = (rows >= batch) & (rows < total_rows)
        drawn = tl.load(drawn_ptr + (rows - batch), mask=is_outlier, other=0).to(tl.int64)
        other = tl.load(outliers_ptr + drawn[:, None] * features + cols[None, :],
                        mask=is_outlier[:, None] & col_ok[None, :], other=0)  # fmt: skip
        pixels = tl.where(is_digit[:, None], pixels, other)
    mean = tl.load(mean_ptr)
    std = tl.load(std_ptr)
    # The order of MLP.normalize: times float32(1/255), minus mean, divided by std (not times its inverse).
    x = (pixels.to(tl.float32) * (1.0 / 255.0) - mean) / std
    valid = (rows < total_rows)[:, None] & col_ok[None, :]
    return tl.where(valid, x, 0.0)


@triton.jit
def _input_tile(
    x_ptr, images_ptr, outliers_ptr, index_ptr, drawn_ptr, mean_ptr, std_ptr, rows, cols, batch, M, K,
    GATHERED: tl.constexpr, HAS_OUTLIERS: tl.constexpr,
):  # fmt: skip
    """A rows x cols tile of a layer's input (M x K): the first layer's gathered and normalized batch, or the stored
    activations of the layer below. Zero outside M x K."""
    if GATHERED:
        tile = _gathered_rows(images_ptr, outliers_ptr, index_ptr, drawn_ptr, mean_ptr, std_ptr, rows, cols, batch, M,
                              K, HAS_OUTLIERS)  # fmt: skip
    else:
        tile = tl.load(x_ptr + rows[:, None] * K + cols[None, :], mask=(rows < M)[:, None] & (cols < K)[None, :],
                       other=0.0)  # fmt: skip
    return tile


@triton.jit
def _linear_kernel(
    a_ptr, w_ptr, bias_ptr, gate_ptr, out_ptr,
    images_ptr, outliers_ptr, index_ptr, drawn_ptr, mean_ptr, std_ptr, batch,
    M, N, K, stride_wk, stride_wn,
    GATHERED: tl.constexpr, HAS_OUTLIERS: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr,
    GATED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """out (M x N) = a (M x K) @ w viewed as K x N through its strides; then + bias, ReLU (forward), or zero
    where gate (M x N) is not > 0 (ReLU's backward). a is the gathered, normalized batch when GATHERED."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        a = _input_tile(a_ptr, images_ptr, outliers_ptr, index_ptr, drawn_ptr, mean_ptr, std_ptr, rows, ks, batch, M,
                        K, GATHERED, HAS_OUTLIERS)  # fmt: skip
        w = tl.load(w_ptr + ks[:, None] * stride_wk + cols[None, :] * stride_wn,
                    mask=(ks < K)[:, None] & (cols < N)[None, :], other=0.0)  # fmt: skip
        acc = tl.dot(a, w, acc, input_precision="ieee")
    out_mask = (rows < M)[:, None] & (cols < N)[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=cols < N, other=0.0)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    if GATED:
        gate = tl.load(gate_ptr + rows[:, None] * N + cols[None, :], mask=out_mask, other=0.0)
        acc = tl.where(gate > 0.0, acc, 0.0)
    tl.store(out_ptr + rows[:, None] * N + cols[None, :], acc, mask=out_mask)


@triton.jit
def _logits_loss_kernel(
    h_ptr, w_ptr, bias_ptr, labels_ptr, index_ptr, weight_ptr, grad_ptr, grad_in_ptr, loss_sum_ptr, correct_ptr,
    batch, M, H, C, keep, smooth_per_class, outlier_scale, inverse_classes,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_B: tl.constexpr,
):  # fmt: skip
    """Logits, loss, correct count, the gradient in the logits (stored: the last weight gradient needs it) and
    the gradient in the last hidden layer's output (ReLU-gated), for BLOCK_M rows."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    classes = tl.arange(0, BLOCK_C)
    row_ok = rows < M
    class_ok = classes < C
    logits = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_H):
        ks = k0 + tl.arange(0, BLOCK_H)
        h = tl.load(h_ptr + rows[:, None] * H + ks[None, :], mask=row_ok[:, None] & (ks < H)[None, :], other=0.0)
        w_t = tl.load(w_ptr + classes[None, :] * H + ks[:, None], mask=class_ok[None, :] & (ks < H)[:, None],
                      other=0.0)  # fmt: skip
        logits = tl.dot(h, w_t, logits, input_precision="ieee")
    logits += tl.load(bias_ptr + classes, mask=class_ok, other=0.0)[None, :]
    logits = tl.where(class_ok[None, :], logits, float("-inf"))

    # log_softmax as PyTorch computes it: (x - max) - log(sum(exp(x - max))); p = exp(log p) as backprop.py.
    shifted = logits - tl.max(logits, axis=1)[:, None]
    log_probs = shifted - tl.log(tl.sum(tl.exp(shifted), axis=1))[:, None]
    probs = tl.exp(log_probs)  # 0 in the padded classes

    is_digit = rows < batch
    label = tl.load(labels_ptr + tl.load(index_ptr + rows, mask=is_digit, other=0), mask=is_digit, other=0)
    hit = classes[None, :] == label[:, None].to(tl.int32)
    weight = tl.load(weight_ptr + rows, mask=is_digit, other=0.0)
    samples = tl.arange(0, BLOCK_B)
    weight_sum = tl.sum(tl.load(weight_ptr + samples, mask=samples < batch, other=0.0), axis=0)

    # Per sample: -(1 - e) log p[label] - (e / C) sum_c log p[c]; summed with the weights.
    picked = tl.sum(tl.where(hit, log_probs, 0.0), axis=1)
    all_classes = tl.sum(tl.where(class_ok[None, :], log_probs, 0.0), axis=1)
    per_sample = picked * -keep - smooth_per_class * all_classes
    tl.atomic_add(loss_sum_ptr, tl.sum(tl.where(is_digit, per_sample * weight, 0.0), axis=0))
    predicted = tl.argmax(logits, axis=1)
    right = is_digit & (weight > 0.0) & (predicted == label.to(tl.int32))
    tl.atomic_add(correct_ptr, tl.sum(right.to(tl.int64), axis=0))

    # The gradient of the (weighted) mean loss: p - e/C - (1 - e) one_hot, times weight / sum(weight); an outlier
    # row's target is uniform, its term scaled by outlier_weight / outliers.
    digit_grad = (probs - smooth_per_class + tl.where(hit, -keep, 0.0)) * (weight / weight_sum)[:, None]
    outlier_grad = (probs - inverse_classes) * outlier_scale
    grad = tl.where(is_digit[:, None], digit_grad, outlier_grad)
    grad = tl.where(row_ok[:, None] & class_ok[None, :], grad, 0.0)
    tl.store(grad_ptr + rows[:, None] * C + classes[None, :], grad, mask=row_ok[:, None] & class_ok[None, :])

    # The last hidden layer's gradient: grad @ W, zero where its (ReLU) output was zero.
    for k0 in range(0, H, BLOCK_H):
        ks = k0 + tl.arange(0, BLOCK_H)
        tile = row_ok[:, None] & (ks < H)[None, :]
        w = tl.load(w_ptr + classes[:, None] * H + ks[None, :], mask=class_ok[:, None] & (ks < H)[None, :], other=0.0)
        below = tl.dot(grad, w, input_precision="ieee")
        h = tl.load(h_ptr + rows[:, None] * H + ks[None, :], mask=tile, other=0.0)
        tl.store(grad_in_ptr + rows[:, None] * H + ks[None, :], tl.where(h > 0.0, below, 0.0), mask=tile)


@triton.jit
def _sgd_update(param_ptr, buffer_ptr, offsets, mask, grad, lr, weight_decay, momentum,
                HAS_DECAY: tl.constexpr, HAS_MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr):  # fmt: skip
    """torch.optim.SGD's rule (dampening 0), as its fused kernel applies it, on one tile."""
    param = tl.load(param_ptr + offsets, mask=mask, other=0.0)
    if HAS_DECAY:
        grad = grad + weight_decay * param
    if HAS_MOMENTUM:
        # The buffers start at zero (init_optimizer_state): momentum * 0 + grad is the first step's buffer = grad.
        buffer = momentum * tl.load(buffer_ptr + offsets, mask=mask, other=0.0) + grad
        tl.store(buffer_ptr + offsets, buffer, mask=mask)
        if NESTEROV:  # noqa: SIM108 - a constexpr branch, resolved when the kernel is compiled
            grad = grad + momentum * buffer
        else:
            grad = buffer
    tl.store(param_ptr + offsets, param - lr * grad, mask=mask)


@triton.jit
def _weight_grad_sgd_kernel(
    grad_ptr, x_ptr, weight_ptr, weight_buffer_ptr, bias_ptr, bias_buffer_ptr, lr_ptr,
    images_ptr, outliers_ptr, index_ptr, drawn_ptr, mean_ptr, std_ptr, batch,
    M, N, K, weight_decay, momentum,
    GATHERED: tl.constexpr, HAS_OUTLIERS: tl.constexpr, HAS_DECAY: tl.constexpr, HAS_MOMENTUM: tl.constexpr,
    NESTEROV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """The weight (N x K) tile's gradient grad^T (N x M) @ x (M x K), then its SGD update; the programs of the
    first K tile also sum grad over the rows for the bias and update it."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    outs = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ins = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    bias_acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        g = tl.load(grad_ptr + rows[:, None] * N + outs[None, :], mask=(rows < M)[:, None] & (outs < N)[None, :],
                    other=0.0)  # fmt: skip
        x = _input_tile(x_ptr, images_ptr, outliers_ptr, index_ptr, drawn_ptr, mean_ptr, std_ptr, rows, ins, batch, M,
                        K, GATHERED, HAS_OUTLIERS)  # fmt: skip
        acc = tl.dot(tl.trans(g), x, acc, input_precision="ieee")
        bias_acc += tl.sum(g, axis=0)
    lr = tl.load(lr_ptr)
    tile = (outs < N)[:, None] & (ins < K)[None, :]
    _sgd_update(weight_ptr, weight_buffer_ptr, outs[:, None] * K + ins[None, :], tile, acc, lr, weight_decay,
                momentum, HAS_DECAY, HAS_MOMENTUM, NESTEROV)  # fmt: skip
    if pid_k == 0:
        _sgd_update(bias_ptr, bias_buffer_ptr, outs, outs < N, bias_acc, lr, weight_decay, momentum, HAS_DECAY,
                    HAS_MOMENTUM, NESTEROV)  # fmt: skip


def unsupported_reason(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    *,
    bf16: bool = False,
    augment: Any = None,
    max_grad_norm: float = 0.0,
    outliers: torch.Tensor | None = None,
) -> str | None:
    """Why the fused step cannot run this configuration (the caller then keeps the existing step), or None."""
    if not isinstance(model, MLP):
        return "the model is not the MLP of model.py"
    if model.dropout > 0:
        return "dropout > 0 is not fused (its masks would have to be drawn as nn.Dropout draws them)"
    if any(not isinstance(layer, nn.Linear | nn.ReLU) for layer in model.layers):
        return "the model has layers other than Linear and ReLU"
    if not model.hidden_sizes:
        return "a model without hidden layers is not fused"
    if bf16:
        return "bf16 autocast is not fused (fp32 only)"
    if augment is not None:
        return "augmentation is not fused"
    if max_grad_norm > 0:
        return "gradient clipping needs the global gradient norm before any update: not fused"
    if type(optimizer) is not torch.optim.SGD:
        return f"only SGD is fused, not {type(optimizer).__name__}"
    if len(optimizer.param_groups) != 1:
        return "SGD with more than one parameter group is not fused"
    group = optimizer.param_groups[0]
    if {id(p) for p in group["params"]} != {id(p) for p in model.parameters()}:
        return "the optimizer's parameters are not exactly the model's"
    if group.get("dampening", 0) != 0 or group.get("maximize", False):
        return "SGD with dampening or maximize is not fused"
    lr = group["lr"]
    if not isinstance(lr, torch.Tensor) or lr.device != images.device or lr.dtype != torch.float32:
        return "the learning rate must be a float32 tensor on the device (build_optimizer's graph-safe SGD)"
    if images.dtype != torch.uint8 or (outliers is not None and outliers.dtype != torch.uint8):
        return "only uint8 images are fused"
    features = linear_layers(model)[0].in_features
    for name, tensor in (("images", images), ("outliers", outliers)):
        if tensor is not None and (not tensor.is_contiguous() or tensor[0].numel() != features):
            return f"the {name} must be contiguous with {features} pixels per image"
    if any(p.dtype != torch.float32 or p.device != images.device or not p.is_contiguous() for p in model.parameters()):
        return "the parameters must be contiguous float32 on the images' device"
    if images.device.type != "cuda" and not _INTERPRETED:
        return "the kernels need CUDA (or TRITON_INTERPRET=1 set before this module is imported, for the CPU)"
    return None


@dataclass(frozen=True)
class Blocks:
    """Tile sizes (powers of two, >= 16 where they feed tl.dot). Untuned: a GPU session should sweep them."""

    rows: int = 32  # forward and input-gradient GEMMs: rows of the batch per program
    cols: int = 32  # ... output features per program
    depth: int = 64  # ... reduction step
    loss_rows: int = 64  # rows per program of the loss kernel (one program at batch 64: a deterministic sum)
    loss_depth: int = 64  # the loss kernel's step over the last hidden layer
    grad_outs: int = 32  # weight-gradient GEMMs: output features per program
    grad_ins: int = 64  # ... input features per program
    grad_rows: int = 32  # ... reduction step over the batch


@dataclass(eq=False)
class FusedStep(FixedShapeStep):
    """The fixed-shape step with `run` replaced by the fused kernels; everything else (load, train_epoch,
    replay, capture_cuda_graph, state_restored) is FixedShapeStep's. Raises ValueError for a configuration
    `unsupported_reason` refuses."""

    blocks: Blocks = field(default_factory=Blocks)

    def __post_init__(self) -> None:
        super().__post_init__()
        reason = unsupported_reason(self.model, self.optimizer, self.images, bf16=self.bf16, augment=self.augment,
                                    max_grad_norm=self.max_grad_norm,
                                    outliers=self.outliers if self.outlier_batch else None)  # fmt: skip
        if reason is not None:
            raise ValueError(f"fused step: {reason}")
        device = self.images.device
        self.layers = linear_layers(self.model)  # type: ignore[arg-type]
        rows = self.batch_size + self.outlier_batch
        # activations[i]: layer i's input (i >= 1), post-ReLU; grads[i]: the loss's gradient in layer i's output.
        self.activations: list[torch.Tensor | None] = [None]
        self.activations += [torch.empty(rows, layer.in_features, device=device) for layer in self.layers[1:]]
        self.grads = [torch.empty(rows, layer.out_features, device=device) for layer in self.layers]
        if self.optimizer.param_groups[0]["momentum"]:
            for param in self.model.parameters():  # created now, not inside a graph capture
                self._momentum_buffer(param)
        # Outlier draws land here (random_ in place equals torch.randint's draw from the same generator state).
        self.drawn = torch.zeros(max(self.outlier_batch, 1), dtype=torch.long, device=device)

    def _momentum_buffer(self, param: nn.Parameter) -> torch.Tensor:
        state = self.optimizer.state[param]
        if "momentum_buffer" not in state or state["momentum_buffer"] is None:
            state["momentum_buffer"] = torch.zeros_like(param)  # what init_optimizer_state creates
        return state["momentum_buffer"]

    def run(self) -> None:
        group = self.optimizer.param_groups[0]
        lr: torch.Tensor = group["lr"]
        momentum, decay, nesterov = float(group["momentum"]), float(group["weight_decay"]), bool(group["nesterov"])
        blocks, layers, batch = self.blocks, self.layers, self.batch_size
        rows = batch + self.outlier_batch
        has_outliers = self.outlier_batch > 0
        if has_outliers:
            assert self.outliers is not None
            self.drawn.random_(0, len(self.outliers))
        outliers = self.outliers if has_outliers else self.images
        gather = (self.images, outliers, self.index, self.drawn, self.model.mean, self.model.std, batch)
        last = len(layers) - 1

        # Forward through the hidden layers; the first reads the uint8 batch itself.
        for number, layer in enumerate(layers[:-1]):
            out_features, in_features = layer.weight.shape
            source = layer.weight if number == 0 else self.activations[number]
            grid = (triton.cdiv(rows, blocks.rows), triton.cdiv(out_features, blocks.cols))
            _linear_kernel[grid](
                source, layer.weight, layer.bias, layer.weight, self.activations[number + 1], *gather,
                rows, out_features, in_features, 1, in_features,
                GATHERED=number == 0, HAS_OUTLIERS=has_outliers and number == 0, HAS_BIAS=True, RELU=True, GATED=False,
                BLOCK_M=blocks.rows, BLOCK_N=blocks.cols, BLOCK_K=blocks.depth,
            )  # fmt: skip

        # Logits, loss, correct, the logits' gradient and the last hidden layer's gradient.
        out_layer = layers[last]
        classes, hidden = out_layer.weight.shape
        _logits_loss_kernel[(triton.cdiv(rows, blocks.loss_rows),)](
            self.activations[last], out_layer.weight, out_layer.bias, self.labels, self.index, self.weight,
            self.grads[last], self.grads[last - 1], self.loss_sum, self.correct,
            batch, rows, hidden, classes, 1.0 - self.label_smoothing, self.label_smoothing / classes,
            self.outlier_weight / self.outlier_batch if has_outliers else 0.0, 1.0 / classes,
            BLOCK_M=blocks.loss_rows, BLOCK_C=max(16, triton.next_power_of_2(classes)), BLOCK_H=blocks.loss_depth,
            BLOCK_B=triton.next_power_of_2(batch),
        )  # fmt: skip

        # Backward, last layer first: the input gradient (old weights) before each layer's update.
        for number in range(last, -1, -1):
            layer = layers[number]
            out_features, in_features = layer.weight.shape
            if 0 < number < last:
                grid = (triton.cdiv(rows, blocks.rows), triton.cdiv(in_features, blocks.cols))
                _linear_kernel[grid](
                    self.grads[number], layer.weight, layer.bias, self.activations[number], self.grads[number - 1],
                    *gather, rows, in_features, out_features, in_features, 1,
                    GATHERED=False, HAS_OUTLIERS=False, HAS_BIAS=False, RELU=False, GATED=True,
                    BLOCK_M=blocks.rows, BLOCK_N=blocks.cols, BLOCK_K=blocks.depth,
                )  # fmt: skip
            weight_buffer = self._momentum_buffer(layer.weight) if momentum else layer.weight
            bias_buffer = self._momentum_buffer(layer.bias) if momentum else layer.bias
            grid = (triton.cdiv(out_features, blocks.grad_outs), triton.cdiv(in_features, blocks.grad_ins))
            _weight_grad_sgd_kernel[grid](
                self.grads[number], layer.weight if number == 0 else self.activations[number], layer.weight,
                weight_buffer, layer.bias, bias_buffer, lr, *gather, rows, out_features, in_features, decay, momentum,
                GATHERED=number == 0, HAS_OUTLIERS=has_outliers and number == 0, HAS_DECAY=decay != 0,
                HAS_MOMENTUM=momentum != 0, NESTEROV=nesterov,
                BLOCK_M=blocks.grad_rows, BLOCK_N=blocks.grad_outs, BLOCK_K=blocks.grad_ins,
            )  # fmt: skip


def _interpreted() -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_linear_kernel, InterpretedFunction)


_INTERPRETED = _interpreted()
