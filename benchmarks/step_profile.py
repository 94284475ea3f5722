"""What one training step costs on the CPU, and what it is made of: the ops it launches (counted with the
profiler), its time, and the floor set by its matrix products alone.

    python benchmarks/step_profile.py --mirror ../shared/data/mnist [--steps 300] [--out results/step-profile-cpu.json]

For each recipe (the seed's settings: batch 64, plain SGD; the default recipe: batch 256, Nesterov SGD, label
smoothing) and each step (plain, fixed-shape) it measures, with autograd and with the written-out gradients:
- ops per step: the top-level aten ops the profiler records (each one a kernel launch on a GPU), all of them and
  without views and allocations (which launch nothing);
- microseconds per step: the median of `--rounds` timed runs of `--steps` steps, on one thread as training runs;
- the matmul floor: the same eight matrix products (three forward, three weight gradients, two input gradients)
  with the step's shapes, alone. An epoch cannot be faster than steps x floor: that bounds the attainable ratio.
"""

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from mnist_core.config import RunParams
from mnist_core.data.download import download_dataset
from mnist_core.data.prepare import load_prepared, prepare_dataset
from mnist_core.training.model import MLP
from mnist_core.training.optim import build_optimizer, init_optimizer_state
from mnist_core.training.steps import FixedShapeStep, PlainStep

CPU = torch.device("cpu")
# Ops that only describe memory (or allocate it): no kernel runs for them.
NO_KERNEL = {
    "aten::t", "aten::transpose", "aten::as_strided", "aten::unsqueeze", "aten::squeeze", "aten::view",
    "aten::expand", "aten::split", "aten::detach", "aten::alias", "aten::select", "aten::slice", "aten::narrow",
    "aten::lift_fresh", "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::result_type",
    "aten::unbind", "aten::reshape", "aten::_reshape_alias", "aten::flatten", "aten::resolve_conj",
    "aten::resolve_neg",
}  # fmt: skip
RECIPES = {"seed": RunParams(preset="seed"), "default": RunParams()}


def make_step(kind: str, params: RunParams, images: torch.Tensor, labels: torch.Tensor, written_out: bool):
    torch.manual_seed(0)
    model = MLP(params.hidden_sizes, params.dropout)
    optimizer = build_optimizer(model, params, CPU, "plain" if kind == "plain" else "fixed_shape")
    init_optimizer_state(optimizer)
    step_class = PlainStep if kind == "plain" else FixedShapeStep
    return step_class(model, optimizer, images, labels.long(), params.batch_size, params.label_smoothing,
                      written_out=written_out)  # fmt: skip


def ops_per_step(step: Any, order: torch.Tensor, steps: int) -> dict[str, float]:
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        step.train_epoch(order, lambda: None)
    top_level = [
        event for event in profiler.events()
        if event.name.startswith("aten::") and not (event.cpu_parent and event.cpu_parent.name.startswith("aten::"))
    ]  # fmt: skip
    kernels = [event for event in top_level if event.name not in NO_KERNEL]
    return {"all": len(top_level) / steps, "kernels": len(kernels) / steps}


def step_microseconds(step: Any, order: torch.Tensor, steps: int, rounds: int) -> float:
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        step.train_epoch(order, lambda: None)
        timings.append((time.perf_counter() - started) / steps * 1e6)
    return statistics.median(timings)


def matmul_floor_microseconds(params: RunParams, rounds: int, repeats: int = 300) -> float:
    """The step's eight matrix products with its shapes and layouts (as backprop.py computes them), alone."""
    widths = [784, *params.hidden_sizes, 10]
    batch = params.batch_size
    weights = [torch.randn(out, inp) for inp, out in zip(widths[:-1], widths[1:], strict=True)]
    biases = [torch.randn(out) for out in widths[1:]]
    inputs = [torch.randn(batch, width) for width in widths[:-1]]
    grads = [torch.randn(batch, width) for width in widths[1:]]
    weight_grads = [torch.empty_like(weight) for weight in weights]

    def products() -> None:
        for layer, weight in enumerate(weights):
            torch.addmm(biases[layer], inputs[layer], weight.t())
            torch.mm(grads[layer].t(), inputs[layer], out=weight_grads[layer])
            if layer > 0:
                torch.mm(grads[layer], weight)

    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(repeats):
            products()
        timings.append((time.perf_counter() - started) / repeats * 1e6)
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mirror", required=True)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as CPU training runs (train.CPU_TRAIN_THREADS)
    defaults = RunParams()
    downloaded = download_dataset("mnist", args.data_dir, [args.mirror])
    data = load_prepared(prepare_dataset(downloaded, args.data_dir, defaults.val_size, defaults.seed).path)
    report: dict[str, Any] = {"torch": torch.__version__, "steps": args.steps, "rounds": args.rounds}
    for recipe, params in RECIPES.items():
        # The first steps x batch images (an epoch of exactly `steps` full batches), in a seeded random order.
        steps = min(args.steps, len(data["train_images"]) // params.batch_size)
        count = steps * params.batch_size
        images, labels = data["train_images"][:count], data["train_labels"][:count]
        order = torch.randperm(count, generator=torch.Generator().manual_seed(0))
        floor = matmul_floor_microseconds(params, args.rounds)
        report[recipe] = {"batch_size": params.batch_size, "steps_timed": steps, "matmul_floor_us": floor, "steps": {}}
        print(f"{recipe} (batch {params.batch_size}): matmul floor {floor:.0f} us/step")
        for kind in ("plain", "fixed_shape"):
            for written_out in (False, True):
                step = make_step(kind, params, images, labels, written_out)
                step.train_epoch(order, lambda: None)  # warm-up
                ops = ops_per_step(step, order, steps)
                micros = step_microseconds(step, order, steps, args.rounds)
                name = f"{kind}, {'written-out' if written_out else 'autograd'}"
                report[recipe]["steps"][name] = {"ops_per_step": ops, "us_per_step": micros}
                print(f"  {name:26s} {micros:6.0f} us/step  {ops['kernels']:4.0f} kernel ops ({ops['all']:.0f} in all)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
