"""The MLP's forward and backward passes written out for one training batch.

They compute what autograd computes for `cross_entropy(model(images), labels, label_smoothing)`, with fewer
operations and no graph: the layer inputs are kept, the loss's gradient with respect to the logits has a closed
form (softmax minus the smoothed one-hot target), and each layer's gradients are two matrix products written
straight into its parameters' `.grad`. On this CPU the step is matmul-bound, and autograd's bookkeeping and
its layouts for the weight gradients cost about a quarter of it (benchmarks: README, Performance).

Dropout draws its masks as `nn.Dropout` does on a CPU (`bernoulli_(1 - p)` on a tensor of the activation's shape,
scaled by `1 / (1 - p)`), so there a seed gives the same masks on both paths (on CUDA, `nn.Dropout` uses a fused
kernel that draws its own). No host sync, fixed shapes for a fixed
batch: the same code can be captured in a CUDA graph. bf16 autocast is not written out: those steps use autograd.
"""

import torch
from torch import nn

from mnist_core.training.model import MLP


def linear_layers(model: MLP) -> list[nn.Linear]:
    return [layer for layer in model.layers if isinstance(layer, nn.Linear)]


def _gradient_buffer(param: nn.Parameter) -> torch.Tensor:
    if param.grad is None:
        param.grad = torch.empty_like(param)
    return param.grad


@torch.no_grad()
def loss_and_gradients(
    model: MLP,
    images: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float = 0.0,
    weight: torch.Tensor | None = None,
    outliers: int = 0,
    outlier_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch: returns (the summed per-sample loss, weighted by `weight` if given; the logits), and
    leaves in each parameter's `.grad` the gradient of the mean loss (the weighted mean, if `weight` is given).

    `labels` are int64 class indices; `weight` (one per sample, >= 0, not all 0) lets a padded batch count only
    its real samples. The last `outliers` rows of `images` are not digits (outlier exposure, Hendrycks et al.
    2019): their loss is the cross-entropy to the uniform distribution, its mean over them times `outlier_weight`
    added to the digits' mean loss; the returned loss and logits are the digits' only (`labels` has a label per
    digit).
    """
    layers = linear_layers(model)
    inputs: list[torch.Tensor] = []  # each layer's input, kept for its weight gradient
    masks: list[torch.Tensor] = []  # dropout's scaled masks, one per hidden layer
    hidden = model.normalize(images)
    for number, layer in enumerate(layers):
        inputs.append(hidden)
        hidden = torch.addmm(layer.bias, hidden, layer.weight.t())
        if number < len(layers) - 1:
            hidden.relu_()
            if model.training and model.dropout > 0:
                keep = 1.0 - model.dropout
                masks.append(torch.empty_like(hidden).bernoulli_(keep).div_(keep))
                hidden.mul_(masks[-1])
    all_logits = hidden
    digits = len(all_logits) - outliers
    logits = all_logits[:digits]

    # Per sample: loss = -(1 - e) log p[label] - (e / C) sum_c log p[c]; its gradient in the logits: p - target,
    # target = (1 - e) one_hot(label) + e / C. An outlier's target is uniform: e = 1, its gradient p - 1 / C.
    classes = all_logits.shape[1]
    all_log_probs = torch.log_softmax(all_logits, 1)
    log_probs = all_log_probs[:digits]
    picked = log_probs.gather(1, labels.unsqueeze(1)).squeeze(1)
    per_sample = picked.mul_(-(1.0 - label_smoothing))
    if label_smoothing:
        per_sample.sub_(log_probs.sum(1), alpha=label_smoothing / classes)
    all_gradient = all_log_probs.exp_()
    gradient = all_gradient[:digits]  # a view: the digits' rows are scaled in place below
    if outliers:
        all_gradient[digits:].sub_(1.0 / classes).mul_(outlier_weight / outliers)
    if label_smoothing:
        gradient.sub_(label_smoothing / classes)
    hit = torch.full((len(labels), 1), -(1.0 - label_smoothing), dtype=gradient.dtype, device=gradient.device)
    gradient.scatter_add_(1, labels.unsqueeze(1), hit)
    if weight is None:
        loss_sum = per_sample.sum()
        gradient.mul_(1.0 / len(labels))
    else:
        loss_sum = (per_sample * weight).sum()
        gradient.mul_((weight / weight.sum()).unsqueeze(1))
    gradient = all_gradient

    for number in reversed(range(len(layers))):
        layer = layers[number]
        torch.mm(gradient.t(), inputs[number], out=_gradient_buffer(layer.weight))
        torch.sum(gradient, 0, out=_gradient_buffer(layer.bias))
        if number > 0:
            gradient = torch.mm(gradient, layer.weight)
            if masks:
                gradient.mul_(masks[number - 1])
            # ReLU's gradient: zero where its output was zero (what autograd's ReLU backward computes).
            gradient = torch.ops.aten.threshold_backward(gradient, inputs[number], 0.0)
    return loss_sum, logits
