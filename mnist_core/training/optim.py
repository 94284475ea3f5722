"""The optimizer and learning-rate schedule, in the form the chosen training step needs."""

import torch
from torch import nn

from mnist_core.config import RunParams
from mnist_core.training.steps import StepKind


def build_optimizer(model: nn.Module, params: RunParams, device: torch.device, step: StepKind) -> torch.optim.Optimizer:
    """The optimizer of `params`, graph-safe where the step needs it.

    The fixed-shape step (captured as a CUDA graph on a GPU, run eagerly elsewhere) gets the graph-safe form
    wherever it runs, so that the CPU tests exercise the update rule a GPU replays. A captured step bakes in every
    Python float it reads, so the learning rate, which the schedule changes each step, lives in a device tensor
    that the scheduler updates in place. SGD has no `capturable` flag: its fused kernel takes a tensor learning
    rate and keeps no step counter, so it is graph-safe as it is (the foreach path would call .item() on a tensor
    rate). Adam's `capturable` form exists on CUDA only, so it is used where a graph is really captured.

    The plain step keeps PyTorch's default SGD (on a CPU, a loop over the parameters) with a float learning rate,
    measured faster there.
    """
    if params.optimizer == "sgd":
        fused = step != "plain" and device.type in ("cpu", "cuda")
        return torch.optim.SGD(
            model.parameters(),
            lr=torch.tensor(params.lr, device=device) if fused else params.lr,
            momentum=params.momentum,
            nesterov=params.nesterov and params.momentum > 0,
            weight_decay=params.weight_decay,
            fused=fused,
        )
    capturable = step == "cuda_graph"
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
