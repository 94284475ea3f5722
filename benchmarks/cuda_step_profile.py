"""What one training step costs on a CUDA GPU, and where the time goes: the CPU launching it or the GPU running it.

    python benchmarks/cuda_step_profile.py --mirror ../shared/data/mnist [--out results/step-profile-cuda.json]

For the seed's settings (batch 64, plain SGD) and the default recipe (batch 256, Nesterov SGD, label smoothing),
and for each precision and gradient form, it measures in microseconds per step:
- eager: the fixed-shape step run eagerly, one epoch's worth of steps (`train_epoch`, as training runs it);
- graph: the same with the step captured as one CUDA graph (what training runs on CUDA);
- replay only: the graph replayed in a loop, without loading each batch's indices;
- graph floor: `--unroll` consecutive steps captured as one graph, replayed: the GPU's own time per step, with
  no launch cost on the CPU. When `graph` is far above it, the CPU (Python, launches) is the limit;
and the CUDA kernels one eager step launches (the profiler's count) with their summed GPU time.
"""

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from mnist_core.config import RunParams
from mnist_core.data.download import download_dataset
from mnist_core.data.prepare import load_prepared, prepare_dataset
from mnist_core.training.model import MLP
from mnist_core.training.optim import build_optimizer, init_optimizer_state
from mnist_core.training.steps import FixedShapeStep, capture_cuda_graph, state_restored

RECIPES = {"seed": RunParams(preset="seed"), "default": RunParams()}
VARIANTS = {"fp32, written-out": (False, True), "fp32, autograd": (False, False), "bf16, autograd": (True, False)}


def make_step(params: RunParams, images: torch.Tensor, labels: torch.Tensor, bf16: bool, written_out: bool,
              kind: str) -> FixedShapeStep:  # fmt: skip
    torch.manual_seed(0)
    model = MLP(params.hidden_sizes, params.dropout).to(images.device)
    optimizer = build_optimizer(model, params, images.device, kind)  # type: ignore[arg-type]
    init_optimizer_state(optimizer)
    return FixedShapeStep(model, optimizer, images, labels, params.batch_size, params.label_smoothing, bf16,
                          written_out=written_out)  # fmt: skip


def timed(run: Callable[[], None], device: torch.device, rounds: int) -> list[float]:
    seconds = []
    for _ in range(rounds):
        torch.cuda.synchronize(device)
        started = time.perf_counter()
        run()
        torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - started)
    return seconds


def kernels_per_step(step: FixedShapeStep, steps: int) -> dict[str, float]:
    with state_restored(step), profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        for _ in range(steps):
            step.run()
        torch.cuda.synchronize()
    on_gpu = [event for event in profiler.events() if event.device_type == torch.autograd.DeviceType.CUDA]
    gpu_us = sum(getattr(event, "device_time", 0.0) or 0.0 for event in on_gpu)
    return {"kernels": len(on_gpu) / steps, "kernel_us": gpu_us / steps}


def unrolled_graph(step: FixedShapeStep, unroll: int) -> Callable[[], None]:
    """`unroll` steps on the current batch, captured as one graph (state left as it was)."""
    with state_restored(step):
        capture_cuda_graph(step)  # warms up the side-stream state the way training does
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(unroll):
                step.run()
    return graph.replay


def profile_variant(params: RunParams, images: torch.Tensor, labels: torch.Tensor, order: torch.Tensor,
                    bf16: bool, written_out: bool, args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    device = images.device
    steps = len(order) // params.batch_size
    row: dict[str, Any] = {}
    eager = make_step(params, images, labels, bf16, written_out, "fixed_shape")
    eager.train_epoch(order, lambda: None)  # warm-up: kernels loaded, allocator filled
    row["eager_us"] = statistics.median(timed(lambda: eager.train_epoch(order, lambda: None), device, args.rounds))
    row["eager_us"] *= 1e6 / steps
    row.update(kernels_per_step(eager, 20))
    graph = make_step(params, images, labels, bf16, written_out, "cuda_graph")
    started = time.perf_counter()
    graph.replay = capture_cuda_graph(graph)
    row["capture_s"] = time.perf_counter() - started
    graph.train_epoch(order, lambda: None)
    row["graph_us"] = statistics.median(timed(lambda: graph.train_epoch(order, lambda: None), device, args.rounds))
    row["graph_us"] *= 1e6 / steps

    def replays() -> None:
        for _ in range(steps):
            graph.replay()

    row["replay_only_us"] = statistics.median(timed(replays, device, args.rounds)) * 1e6 / steps
    unrolled = unrolled_graph(graph, args.unroll)

    def unrolled_replays() -> None:
        for _ in range(steps // args.unroll):
            unrolled()

    row["graph_floor_us"] = (
        statistics.median(timed(unrolled_replays, device, args.rounds)) * 1e6 / (steps // args.unroll * args.unroll)
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mirror", required=True)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--unroll", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device("cuda")
    defaults = RunParams()
    downloaded = download_dataset("mnist", args.data_dir, [args.mirror])
    data = load_prepared(prepare_dataset(downloaded, args.data_dir, defaults.val_size, defaults.seed).path, device)
    images, labels = data["train_images"], data["train_labels"].long()
    report: dict[str, Any] = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(device),
                              "rounds": args.rounds, "unroll": args.unroll}  # fmt: skip
    for recipe, params in RECIPES.items():
        # The whole batches of the training set, in a seeded random order (training pads the ragged tail).
        count = len(images) // params.batch_size * params.batch_size
        order = torch.randperm(count, generator=torch.Generator().manual_seed(0)).to(device)
        report[recipe] = {"batch_size": params.batch_size, "steps": count // params.batch_size}
        print(f"{recipe} (batch {params.batch_size}, {count // params.batch_size} steps)", flush=True)
        for name, (bf16, written_out) in VARIANTS.items():
            try:
                row = profile_variant(params, images[:count], labels[:count], order, bf16, written_out, args)
            except Exception as error:  # noqa: BLE001 - report the variant that failed, measure the others
                row = {"error": f"{type(error).__name__}: {error}"}
            report[recipe][name] = row
            print(f"  {name:18s} " + ", ".join(
                f"{key} {value:.1f}" if isinstance(value, float) else f"{key} {value}" for key, value in row.items()
            ), flush=True)  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
