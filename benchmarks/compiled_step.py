"""torch.compile(mode="reduce-overhead") of the fixed-shape training step: a variant the benchmark compares with
the CUDA graph (the project trains with the graph; compile is measured, not used)."""

from collections.abc import Callable

import torch

from mnist_core.training.steps import FixedShapeStep, state_restored


def compile_step(step: FixedShapeStep, warmup_steps: int = 3) -> Callable[[], None]:
    """`step.run` compiled and recorded before it is returned, so that compilation is not counted as training
    time; training state is left as it was before. Pass it to `train_model(..., capture=compile_step)`."""
    compiled_run = torch.compile(step.run, mode="reduce-overhead")

    def compiled() -> None:
        # Each call is one training iteration: the outputs of the last one's CUDA graphs may be overwritten.
        torch.compiler.cudagraph_mark_step_begin()
        compiled_run()

    with state_restored(step):
        for _ in range(warmup_steps):
            compiled()
        if step.index.device.type == "cuda":
            torch.cuda.synchronize(step.index.device)
    return compiled
