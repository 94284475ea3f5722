"""The fused Triton training step (mnist_core/training/fused.py) against the project's CUDA-graph step, on a GPU.

    python benchmarks/fused_step.py [--mirror DIR] [--rounds 5] [--out results/fused-step-cuda.json]

1. Checks: three steps (the third batch padded: 10 rows of weight 0) of the written-out FixedShapeStep and of the
   FusedStep from the same weights, at the seed's settings, the default recipe (Nesterov, weight decay, label
   smoothing, batch 256) and the default recipe with outlier exposure; prints the largest difference in the
   parameters and momentum buffers, the loss sums and the correct counts.
2. Times one epoch at the seed's settings (batch 64, plain SGD lr 0.01; `--recipes seed,default` adds the
   default recipe): the existing step captured as a CUDA graph (steps.capture_cuda_graph, what training runs),
   the fused step captured the same way, and the fused step eager. Seconds per epoch (median of `--rounds`),
   the ratio, capture seconds, and the CUDA kernels of one step with their summed GPU time (the profiler, over
   eager steps and over graph replays).
3. Prints the whole report as JSON (and writes it to `--out`).

On random uint8 images (60 000, seeded), or MNIST's 60 000 training images with `--mirror` (the folder of the IDX
.gz files). Needs torch, triton and numpy only (no pydantic: the recipes are written out here, as config.py has
them). Without CUDA it stops with one line. Expected: well under 3 minutes on an H100, most of it Triton's first
compilations.
"""

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mnist_core.training.fused import FusedStep, unsupported_reason  # noqa: E402
from mnist_core.training.model import MLP  # noqa: E402
from mnist_core.training.steps import FixedShapeStep, capture_cuda_graph, epoch_batches, state_restored  # noqa: E402

# config.PRESETS["seed"] and FAST98 (the default recipe), the fields a training step reads.
RECIPES: dict[str, dict[str, Any]] = {
    "seed": {"hidden": [128, 64], "batch": 64, "lr": 0.01, "momentum": 0.0, "nesterov": False,
             "weight_decay": 0.0, "smoothing": 0.0},
    "default": {"hidden": [128, 64], "batch": 256, "lr": 0.3, "momentum": 0.9, "nesterov": True,
                "weight_decay": 5e-4, "smoothing": 0.1},
}  # fmt: skip
OUTLIER_BATCH, OUTLIER_WEIGHT = 64, 0.25


def make_step(
    step_class: type[FixedShapeStep],
    recipe: dict[str, Any],
    images: torch.Tensor,
    labels: torch.Tensor,
    outliers: torch.Tensor | None = None,
) -> FixedShapeStep:
    """A step as train.py builds it for CUDA: seeded MLP, build_optimizer's graph-safe SGD (fused, lr a device
    tensor), momentum buffers created up front (init_optimizer_state), written-out gradients."""
    device = images.device
    torch.manual_seed(0)
    model = MLP(recipe["hidden"]).to(device)
    momentum = recipe["momentum"]
    lr = torch.tensor(recipe["lr"], device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=recipe["nesterov"],
                                weight_decay=recipe["weight_decay"], fused=True)  # fmt: skip
    if momentum:
        for param in model.parameters():
            optimizer.state[param]["momentum_buffer"] = torch.zeros_like(param)
    extra: dict[str, Any] = {}
    if outliers is not None:
        extra = {"outliers": outliers, "outlier_batch": OUTLIER_BATCH, "outlier_weight": OUTLIER_WEIGHT}
    return step_class(model, optimizer, images, labels, recipe["batch"], recipe["smoothing"], written_out=True,
                      **extra)  # fmt: skip


def compare(
    recipe: dict[str, Any], images: torch.Tensor, labels: torch.Tensor, outliers: torch.Tensor | None = None
) -> dict[str, Any]:
    """Three steps of each path from the same state; the third batch padded with 10 rows of weight 0."""
    steps = {name: make_step(cls, recipe, images, labels, outliers)
             for name, cls in (("reference", FixedShapeStep), ("fused", FusedStep))}  # fmt: skip
    initial = [param.detach().clone() for param in steps["fused"].model.parameters()]
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(1)).to(images.device)
    batches = epoch_batches(order, recipe["batch"])[:3]
    for number, index in enumerate(batches):
        weight = torch.ones(recipe["batch"], device=images.device)
        if number == 2:
            weight[-10:] = 0
        for step in steps.values():
            step.load(index, weight)
            torch.manual_seed(100 + number)  # the same outlier draws on both paths
            step.run()
    reference, fused = steps["reference"], steps["fused"]
    param_diff = buffer_diff = 0.0
    for expected, actual in zip(reference.model.parameters(), fused.model.parameters(), strict=True):
        param_diff = max(param_diff, (expected - actual).abs().max().item())
        expected_buffer = reference.optimizer.state[expected].get("momentum_buffer")
        if expected_buffer is not None:
            actual_buffer = fused.optimizer.state[actual]["momentum_buffer"]
            buffer_diff = max(buffer_diff, (expected_buffer - actual_buffer).abs().max().item())
    moved = max(
        (param - before).abs().max().item() for param, before in zip(fused.model.parameters(), initial, strict=True)
    )
    return {"max_abs_param_diff": param_diff, "max_abs_momentum_diff": buffer_diff,
            "loss_sum": [reference.loss_sum.item(), fused.loss_sum.item()],
            "correct": [reference.correct.item(), fused.correct.item()], "max_abs_moved": moved}  # fmt: skip


def timed(run: Callable[[], None], rounds: int) -> list[float]:
    seconds = []
    for _ in range(rounds):
        torch.cuda.synchronize()
        started = time.perf_counter()
        run()
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    return seconds


def kernels(step: FixedShapeStep, run: Callable[[], None], steps: int) -> dict[str, Any]:
    """CUDA kernels per step and their summed GPU microseconds (the profiler's CUDA events, copies apart), over
    `steps` calls of `run` on the current batch; training state left as it was."""
    from torch.profiler import ProfilerActivity, profile

    with state_restored(step):
        run()  # warm: nothing compiled or allocated inside the profile
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
            for _ in range(steps):
                run()
            torch.cuda.synchronize()
    on_gpu = [event for event in profiler.events() if event.device_type == torch.autograd.DeviceType.CUDA]
    launched = [event for event in on_gpu if not event.name.startswith(("Memcpy", "Memset"))]
    names: dict[str, int] = {}
    for event in launched:
        names[event.name] = names.get(event.name, 0) + 1
    return {
        "kernels": len(launched) / steps,
        "copies": (len(on_gpu) - len(launched)) / steps,
        "gpu_us": sum(getattr(event, "device_time", 0.0) or 0.0 for event in launched) / steps,
        "names": {name: count / steps for name, count in sorted(names.items())},
    }


def time_recipe(recipe: dict[str, Any], images: torch.Tensor, labels: torch.Tensor, rounds: int) -> dict[str, Any]:
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0)).to(images.device)
    steps_per_epoch = -(-len(images) // recipe["batch"])
    row: dict[str, Any] = {"batch": recipe["batch"], "steps_per_epoch": steps_per_epoch}
    sides = {"graph": FixedShapeStep, "fused_graph": FusedStep, "fused_eager": FusedStep}
    for side, step_class in sides.items():
        step = make_step(step_class, recipe, images, labels)
        step.load(order[: recipe["batch"]], torch.ones(recipe["batch"], device=images.device))
        eager = kernels(step, step.run, 10)
        started = time.perf_counter()
        if side != "fused_eager":
            step.replay = capture_cuda_graph(step)
        capture_s = time.perf_counter() - started
        step.train_epoch(order, lambda: None)  # warm-up epoch
        step.reset_totals()
        seconds = timed(lambda step=step: step.train_epoch(order, lambda: None), rounds)
        epoch_s = statistics.median(seconds)
        row[side] = {"s_per_epoch": epoch_s, "us_per_step": epoch_s / steps_per_epoch * 1e6, "capture_s": capture_s,
                     "eager_profile": eager}  # fmt: skip
        if side != "fused_eager":
            # Kernels inside a graph replay: recorded where CUPTI traces graph nodes (recent drivers); 0 if not.
            row[side]["replay_profile"] = kernels(step, step.replay, 10)
        print(f"  {side:12s} {row[side]['s_per_epoch']:.4f} s/epoch, {row[side]['us_per_step']:.1f} us/step, "
              f"{eager['kernels']:.0f} kernels/step eager ({eager['gpu_us']:.1f} GPU us)", flush=True)  # fmt: skip
    row["graph_over_fused_graph"] = row["graph"]["s_per_epoch"] / row["fused_graph"]["s_per_epoch"]
    return row


def load_images(mirror: Path | None, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, str]:
    if mirror is None:
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (60_000, 28, 28), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, 10, (60_000,), generator=generator)
        return images.to(device), labels.to(device), "random uint8"
    from mnist_core.data.idx import read_split

    images, labels = read_split(mirror / "train-images-idx3-ubyte.gz", mirror / "train-labels-idx1-ubyte.gz")
    return (torch.from_numpy(images.copy()).to(device), torch.from_numpy(labels.copy()).long().to(device),
            f"MNIST train ({mirror})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mirror", type=Path, help="folder of MNIST's IDX .gz files (default: random images)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--recipes", default="seed", help="comma-separated recipes to time: seed, default")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("fused_step.py: needs a CUDA GPU (torch.cuda.is_available() is False)")
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # the reference's float32 matmuls, as the fused kernels do
    images, labels, source = load_images(args.mirror, device)
    outliers = torch.randint(0, 256, (5_000, 28, 28), dtype=torch.uint8, device=device)
    import triton

    report: dict[str, Any] = {"torch": torch.__version__, "triton": triton.__version__,
                              "gpu": torch.cuda.get_device_name(device), "data": source, "images": len(images),
                              "rounds": args.rounds, "checks": {}, "timings": {}}  # fmt: skip
    probe = make_step(FixedShapeStep, RECIPES["seed"], images, labels)
    report["unsupported_reason"] = unsupported_reason(probe.model, probe.optimizer, images)
    started = time.perf_counter()
    checks = {"seed": (RECIPES["seed"], None), "default": (RECIPES["default"], None),
              "default+outliers": (RECIPES["default"], outliers)}  # fmt: skip
    for name, (recipe, extra) in checks.items():
        try:
            report["checks"][name] = compare(recipe, images, labels, extra)
        except Exception as error:  # noqa: BLE001 - report the check that failed, run the others
            report["checks"][name] = {"error": f"{type(error).__name__}: {error}"}
        print(f"check {name}: {report['checks'][name]}", flush=True)
    report["checks_s"] = time.perf_counter() - started  # mostly Triton's first compilations
    for name in args.recipes.split(","):
        print(f"{name} (batch {RECIPES[name]['batch']}, {len(images)} images)", flush=True)
        try:
            report["timings"][name] = time_recipe(RECIPES[name], images, labels, args.rounds)
            print(f"  existing graph / fused graph: {report['timings'][name]['graph_over_fused_graph']:.2f}x",
                  flush=True)  # fmt: skip
        except Exception as error:  # noqa: BLE001
            report["timings"][name] = {"error": f"{type(error).__name__}: {error}"}
            print(f"  failed: {report['timings'][name]['error']}", flush=True)
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
