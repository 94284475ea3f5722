"""The fused Triton step (mnist_core/training/fused.py) against the written-out step it replaces: the same weights,
momentum buffers, loss sum and correct count after three steps, its kernels run on the CPU by Triton's interpreter.

The interpreter is chosen when the kernels are decorated (TRITON_INTERPRET=1 at import), and this pytest process
may already have imported the module without it, or may be on a GPU where other tests compile Triton kernels for
real; so the steps run once, in one child process (this file run as a module), and the tests compare what it saved.
"""

import copy
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from mnist_core.config import RunParams
from mnist_core.training.loop import train_model
from mnist_core.training.model import MLP
from mnist_core.training.optim import build_optimizer, init_optimizer_state
from mnist_core.training.steps import FixedShapeStep
from tests.support.training import small_split

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
# Float32 rounding: the kernels sum the matrix products in another order than the CPU's BLAS. Measured after three
# steps: <= 5e-7 on weights and buffers (lr 0.3, momentum 0.9), ~1e-7 relative on the loss sum.
ATOL, RTOL = 5e-6, 1e-5
SGD = {"optimizer": "sgd", "momentum": 0.0, "nesterov": False, "weight_decay": 0.0}
NESTEROV = {"optimizer": "sgd", "lr": 0.3, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}
# name: (run params, hidden sizes, batch, label smoothing, images in the epoch (no multiple of the batch: the last
#        batch padded), outlier batch, outlier weight, tile sizes)
# Large tiles keep the interpreter quick (its cost is per program and per loop turn, not per element); small ones,
# on the small model, give every grid and loop several turns and partial tiles. The GPU's default tiles are checked
# on the GPU, by benchmarks/fused_step.py, against the same reference.
LARGE_TILES = {"rows": 64, "cols": 128, "depth": 256, "loss_rows": 64, "loss_depth": 64, "grad_outs": 128,
               "grad_ins": 256, "grad_rows": 64}  # fmt: skip
SMALL_TILES = {"rows": 32, "cols": 16, "depth": 256, "loss_rows": 32, "loss_depth": 16, "grad_outs": 16,
               "grad_ins": 256, "grad_rows": 32}  # fmt: skip
CASES: dict[str, tuple[Any, ...]] = {
    "seed": ({**SGD, "lr": 0.01}, [128, 64], 64, 0.0, 192, 0, 0.0, LARGE_TILES),
    # Momentum, Nesterov, weight decay, label smoothing, a padded last batch and outliers at once (each case costs
    # the interpreter seconds): 80 rows, two row blocks of the loss kernel, their sums added by atomics.
    "everything": (NESTEROV, [128, 64], 64, 0.1, 150, 16, 0.5, LARGE_TILES),
    # Widths that fill no tile, three hidden layers (two input-gradient kernels), a batch that is no power of 2.
    "odd_shapes": ({**SGD, "lr": 0.1, "momentum": 0.9}, [40, 24, 20], 50, 0.37, 130, 9, 0.7, SMALL_TILES),
}


def _data() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "images": torch.randint(0, 256, (300, 28, 28), dtype=torch.uint8, generator=generator),
        "labels": torch.randint(0, 10, (300,), generator=generator),
        "outliers": torch.randint(0, 256, (40, 28, 28), dtype=torch.uint8, generator=generator),
    }


def _run_case(case: tuple[Any, ...]) -> dict[str, torch.Tensor]:
    """One epoch (three steps, the last padded where `count` is no multiple of the batch) of the written-out step
    and of the fused step from the same model: their parameters, momentum buffers and totals."""
    from mnist_core.training.fused import Blocks, FusedStep

    overrides, hidden, batch, smoothing, count, outlier_batch, outlier_weight, tiles = case
    data = _data()
    params = RunParams(**overrides)
    torch.manual_seed(0)
    model = MLP(hidden)
    # An epoch covers the step's whole image set: its first `count` images.
    images, labels = data["images"][:count], data["labels"][:count]
    order = torch.randperm(count, generator=torch.Generator().manual_seed(1))
    saved: dict[str, torch.Tensor] = {}
    for name in ("reference", "fused"):
        copied = copy.deepcopy(model)
        optimizer = build_optimizer(copied, params, CPU, "fixed_shape")
        init_optimizer_state(optimizer)
        settings: dict[str, Any] = {"blocks": Blocks(**tiles)} if name == "fused" else {}
        step_class = FusedStep if name == "fused" else FixedShapeStep
        step = step_class(copied, optimizer, images, labels, batch, smoothing, written_out=True,
                          outliers=data["outliers"], outlier_batch=outlier_batch, outlier_weight=outlier_weight,
                          **settings)  # fmt: skip
        torch.manual_seed(2)  # the same outlier draws on both paths
        step.train_epoch(order, lambda: None)
        for key, param in copied.named_parameters():
            saved[f"{name}/{key}"] = param.detach().clone()
            buffer = optimizer.state[param].get("momentum_buffer")
            if buffer is not None:
                saved[f"{name}/{key}/momentum_buffer"] = buffer.clone()
        saved[f"{name}/loss_sum"] = step.loss_sum.clone()
        saved[f"{name}/correct"] = step.correct.clone()
    return saved


def _child(out: Path) -> None:
    """Runs in the child, with TRITON_INTERPRET=1 set before the fused module is imported."""
    assert os.environ.get("TRITON_INTERPRET") == "1"
    torch.set_num_threads(1)
    import mnist_core.training.fused as fused

    results: dict[str, Any] = {
        "interpreted": fused._INTERPRETED,
        "cuda_initialized": torch.cuda.is_initialized(),
        "supported": _supported(fused.unsupported_reason),
        "unsupported": _unsupported_answers(fused),
    }
    for name, case in CASES.items():
        results[name] = _run_case(case)
    torch.save(results, out)


def _supported(unsupported_reason: Any) -> str | None:
    model = MLP()
    return unsupported_reason(model, _sgd(model), _data()["images"])


def _sgd(model: MLP, **overrides: Any) -> torch.optim.Optimizer:
    return build_optimizer(model, RunParams(**{**SGD, "lr": 0.01, **overrides}), CPU, "fixed_shape")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("triton", reason="Triton has wheels for Linux x86-64 only")
    out = tmp_path_factory.mktemp("fused") / "results.pt"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(PROJECT_ROOT)}
    completed = subprocess.run([sys.executable, "-m", "tests.training.test_fused", str(out)], cwd=PROJECT_ROOT,
                               env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-4000:]
    return torch.load(out)


def test_the_child_ran_the_kernels_in_the_interpreter_without_cuda(results: dict[str, Any]) -> None:
    assert results["interpreted"] is True
    assert results["cuda_initialized"] is False  # importing the module touches no GPU
    assert results["supported"] is None  # the seed's configuration is covered


@pytest.mark.parametrize("case", list(CASES))
def test_three_fused_steps_update_as_the_written_out_step(results: dict[str, Any], case: str) -> None:
    saved = results[case]
    keys = [key.removeprefix("reference/") for key in saved if key.startswith("reference/")]
    assert any(key.endswith("momentum_buffer") for key in keys) == (CASES[case][0].get("momentum", 0) > 0)
    for key in keys:
        expected, actual = saved[f"reference/{key}"], saved[f"fused/{key}"]
        if key == "correct":
            assert actual.item() == expected.item()
        else:
            torch.testing.assert_close(
                actual, expected, atol=ATOL, rtol=RTOL, msg=lambda text, key=key: f"{key}: {text}"
            )


def test_the_weights_moved(results: dict[str, Any]) -> None:
    """Three steps change every parameter: the comparison above is not of two untouched models."""
    torch.manual_seed(0)
    initial = dict(MLP([128, 64]).named_parameters())
    for key, param in initial.items():
        assert (results["seed"][f"fused/{key}"] - param.detach()).abs().max() > 1e-6, key


UNSUPPORTED: dict[str, tuple[dict[str, Any], str]] = {
    "bf16": ({"bf16": True}, "bf16"),
    "adam": ({"optimizer": "adam"}, "only SGD"),
    "adamw": ({"optimizer": "adamw"}, "only SGD"),
    "dropout": ({"dropout": 0.2}, "dropout"),
    "augmentation": ({"augment": True}, "augmentation"),
    "clipping": ({"max_grad_norm": 1.0}, "clipping"),
    "float lr": ({"float_lr": True}, "learning rate"),
    "float images": ({"float_images": True}, "uint8"),
    "dampening": ({"dampening": 0.1}, "dampening"),
}


def _unsupported_answers(fused: Any) -> dict[str, str | None]:
    """What `unsupported_reason` answers for each UNSUPPORTED configuration, and what FusedStep raises for Adam
    (in the child: the parent never imports triton, ~2 s)."""
    answers: dict[str, str | None] = {}
    for name, (change, _) in UNSUPPORTED.items():
        model = MLP([16], dropout=change.get("dropout", 0.0))
        images = _data()["images"][:8]
        if change.get("float_images"):
            images = images.float() / 255
        if change.get("optimizer") in ("adam", "adamw"):
            optimizer = build_optimizer(model, RunParams(optimizer=change["optimizer"]), CPU, "fixed_shape")
        elif change.get("float_lr"):
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        else:
            optimizer = _sgd(model)
            optimizer.param_groups[0]["dampening"] = change.get("dampening", 0.0)
        options = {key: change[key] for key in ("bf16", "augment", "max_grad_norm") if key in change}
        answers[name] = fused.unsupported_reason(model, optimizer, images, **options)
    model = MLP([16])
    data = _data()
    try:
        fused.FusedStep(model, build_optimizer(model, RunParams(optimizer="adam"), CPU, "fixed_shape"),
                        data["images"], data["labels"], 8)  # fmt: skip
        answers["FusedStep with Adam"] = None
    except ValueError as error:
        answers["FusedStep with Adam"] = str(error)
    return answers


@pytest.mark.parametrize("name", [*UNSUPPORTED, "FusedStep with Adam"])
def test_unsupported_configurations_are_refused_by_name(results: dict[str, Any], name: str) -> None:
    answer = results["unsupported"][name]
    reason = UNSUPPORTED[name][1] if name in UNSUPPORTED else "fused step: only SGD"
    assert answer is not None and reason in answer, answer


def test_asked_for_on_a_cpu_the_step_runs_as_before_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    data = _data()
    split = {"train_images": data["images"][:200], "train_labels": data["labels"][:200],
             "val_images": data["images"][200:], "val_labels": data["labels"][200:]}  # fmt: skip
    with caplog.at_level(logging.INFO):
        result = train_model(split, RunParams(epochs=1, batch_size=64, fused=True), CPU)
    assert (result.step_kind, result.gradients) == ("plain", "written_out")
    assert "fused step not used: its kernels run on CUDA only; the plain step runs" in caplog.text


@pytest.mark.cuda
def test_fused_training_on_cuda_trains_like_the_written_out_step(mnist_tensors: dict[str, torch.Tensor]) -> None:
    """The whole loop (a captured CUDA graph of the fused step, the one-cycle schedule's learning rate in place):
    the same curves as the written-out step, as test_backprop compares that one with autograd."""
    cuda = torch.device("cuda")
    data = {key: tensor[:20000].to(cuda) for key, tensor in small_split(mnist_tensors, 20000).items()}
    params = RunParams(epochs=2, precision="fp32", clip_grad_norm=0.0)  # clipping is not fused
    written = train_model(data, params, cuda)
    fused = train_model(data, params.model_copy(update={"fused": True}), cuda)
    assert (written.gradients, fused.gradients, fused.step_kind) == ("written_out", "fused", "cuda_graph")
    for a, b in zip(written.history, fused.history, strict=True):
        assert b.train_loss == pytest.approx(a.train_loss, rel=1e-2)
    assert fused.history[-1].val_accuracy == pytest.approx(written.history[-1].val_accuracy, abs=0.005)


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
