"""The fixed-shape training step: ragged-batch padding, tensor learning rate, CUDA graph capture."""

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from mnist_core.config import PRESETS, RunParams
from mnist_core.errors import TrainingError
from mnist_core.records import EpochStats
from mnist_core.training.loop import choose_step_kind, train_model, use_bf16
from mnist_core.training.model import MLP
from mnist_core.training.optim import build_optimizer, build_scheduler, init_optimizer_state
from mnist_core.training.steps import FixedShapeStep, batch_weights, epoch_batches, state_restored
from tests.support import PROJECT_ROOT
from tests.support.training import small_split

CPU = torch.device("cpu")


def interrupt_after(epoch: int) -> Callable[[EpochStats], None]:
    """An on_epoch callback that stops training like Ctrl-C once `epoch` is checkpointed."""

    def interrupt(stats: EpochStats) -> None:
        if stats.epoch == epoch:
            raise KeyboardInterrupt

    return interrupt


def test_epoch_batches_cover_every_sample_once_and_pad_from_the_start() -> None:
    order = torch.randperm(13, generator=torch.Generator().manual_seed(1))
    batches = epoch_batches(order, 5)
    weights = batch_weights(13, 5, CPU)
    assert batches.shape == weights.shape == (3, 5)
    real = batches.flatten()[weights.flatten() > 0]
    assert torch.equal(real, order)
    assert torch.equal(batches[-1, 3:], order[:2])
    assert weights.sum().item() == 13
    assert torch.equal(epoch_batches(order[:10], 5).flatten(), order[:10])


def test_padded_last_batch_gives_the_same_update_as_the_ragged_batch() -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (13, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (13,))
    params = RunParams(batch_size=8, epochs=1, label_smoothing=0.1)
    padded_model = MLP()
    ragged_model = copy.deepcopy(padded_model)
    ragged_before = copy.deepcopy(padded_model)
    padded_optimizer = build_optimizer(padded_model, params, CPU, "fixed_shape")
    ragged_optimizer = build_optimizer(ragged_model, params, CPU, "fixed_shape")

    step = FixedShapeStep(padded_model, padded_optimizer, images, labels, 8, label_smoothing=0.1)
    order = torch.arange(13)
    step.load(epoch_batches(order, 8)[1], batch_weights(13, 8, CPU)[1])
    step.run()

    tail = order[8:]
    loss = nn.functional.cross_entropy(ragged_model(images[tail]), labels[tail], label_smoothing=0.1)
    loss.backward()
    ragged_optimizer.step()

    for padded, ragged in zip(padded_model.parameters(), ragged_model.parameters(), strict=True):
        torch.testing.assert_close(padded, ragged)
    torch.testing.assert_close(step.loss_sum, loss.detach() * 5)
    # Padding rows are never counted as correct, whatever the model predicts for them.
    with torch.no_grad():
        predicted_before_step = ragged_before(images[tail]).argmax(1)
    assert step.correct.item() == int((predicted_before_step == labels[tail]).sum())


def test_learning_rate_is_a_tensor_the_scheduler_updates_in_place() -> None:
    params = RunParams(epochs=2, schedule="onecycle")
    model = MLP()
    optimizer = build_optimizer(model, params, CPU, "fixed_shape")
    lr = optimizer.param_groups[0]["lr"]
    scheduler = build_scheduler(optimizer, params, steps_per_epoch=10)
    assert isinstance(lr, torch.Tensor)
    optimizer.step()  # no gradients yet: a no-op that tells the scheduler the optimizer steps first
    seen = []
    for _ in range(20):
        seen.append(lr.item())
        scheduler.step()
    # Same tensor object all along (a captured graph reads its address), value following the one-cycle shape.
    assert optimizer.param_groups[0]["lr"] is lr
    assert seen[0] < max(seen) == pytest.approx(params.lr, rel=0.05) and seen[-1] < seen[0]
    assert optimizer.param_groups[0]["momentum"] == params.momentum  # not cycled: a graph bakes it in


def test_the_step_reads_the_learning_rate_tensor_at_run_time() -> None:
    params = RunParams(weight_decay=5e-4)
    images = torch.randint(0, 256, (16, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (16,))
    model = MLP()
    optimizer = build_optimizer(model, params, CPU, "fixed_shape")
    init_optimizer_state(optimizer)
    step = FixedShapeStep(model, optimizer, images, labels, 16)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.param_groups[0]["lr"].fill_(0.0)
    step.run()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    optimizer.param_groups[0]["lr"].fill_(0.1)
    step.run()
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_zero_momentum_buffers_equal_the_first_step_rule() -> None:
    torch.manual_seed(0)
    params = RunParams()
    images = torch.randint(0, 256, (32, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (32,))
    primed, fresh = MLP(), MLP()
    fresh.load_state_dict(primed.state_dict())
    models = {"primed": primed, "fresh": fresh}
    for name, model in models.items():
        optimizer = build_optimizer(model, params, CPU, "fixed_shape")
        if name == "primed":
            init_optimizer_state(optimizer)
        for _ in range(3):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
    for a, b in zip(primed.parameters(), fresh.parameters(), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_warm_up_steps_leave_the_training_state_as_it_was(optimizer: str) -> None:
    params = RunParams(optimizer=optimizer, lr=0.01)
    images = torch.randint(0, 256, (16, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (16,))
    model = MLP()
    optimizer_ = build_optimizer(model, params, CPU, "fixed_shape")  # capturable Adam is CUDA-only
    init_optimizer_state(optimizer_)
    step = FixedShapeStep(model, optimizer_, images, labels, 16)
    before = copy.deepcopy(model.state_dict())
    with state_restored(step):
        for _ in range(3):
            step.run()
        assert not torch.equal(model.state_dict()["layers.0.weight"], before["layers.0.weight"])
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    for state in optimizer_.state.values():  # as a fresh optimizer would have them: all zeros
        assert all(not value.any() for value in state.values() if isinstance(value, torch.Tensor))
    assert step.loss_sum.item() == 0 and step.correct.item() == 0


def test_cpu_training_is_eager_deterministic_and_reports_setup(mnist_tensors: dict[str, torch.Tensor]) -> None:
    data = small_split(mnist_tensors, 6000)
    params = RunParams(epochs=2, batch_size=256, lr=0.05, schedule="none")  # a ragged last batch of 112
    first, second = train_model(data, params, CPU), train_model(data, params, CPU)
    assert first.step_kind == "plain" and first.precision == "fp32"
    assert [s.train_loss for s in first.history] == [s.train_loss for s in second.history]
    assert first.history[-1].val_accuracy > 0.8
    assert first.setup_seconds < first.train_seconds  # eager CPU: no capture to set up


def test_plain_cpu_step_trains_like_the_fixed_shape_step(mnist_tensors: dict[str, torch.Tensor]) -> None:
    """The CPU's plain step (ragged last batch as it is, foreach SGD) and the graph-safe fixed-shape step
    (padded, weighted, fused SGD) are two implementations of one update rule: same training, up to rounding."""
    data = small_split(mnist_tensors, 1000)
    params = RunParams(epochs=2, batch_size=96, lr=0.1)  # 4000 / 96 leaves a ragged last batch of 64
    plain = train_model(data, params, CPU, step_kind="plain")
    fixed = train_model(data, params, CPU, step_kind="fixed_shape")
    assert (plain.step_kind, fixed.step_kind) == ("plain", "fixed_shape")
    for a, b in zip(plain.history, fixed.history, strict=True):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-4)
        assert a.val_loss == pytest.approx(b.val_loss, rel=1e-4)
    for name, tensor in plain.model.state_dict().items():
        torch.testing.assert_close(tensor, fixed.model.state_dict()[name], rtol=1e-3, atol=1e-5)


def test_cuda_graph_mode_is_refused_on_cpu(mnist_tensors: dict[str, torch.Tensor]) -> None:
    with pytest.raises(TrainingError, match="CUDA"):
        train_model(small_split(mnist_tensors, 512), RunParams(epochs=1), CPU, step_kind="cuda_graph")


def test_resume_after_an_interrupted_epoch_matches_an_uninterrupted_run(
    mnist_tensors: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    data = small_split(mnist_tensors, 2000)
    params = RunParams(epochs=3, batch_size=128)
    checkpoint = tmp_path / "checkpoint.pt"

    with pytest.raises(KeyboardInterrupt):
        train_model(data, params, CPU, checkpoint, on_epoch=interrupt_after(2))
    resumed = train_model(data, params, CPU, checkpoint)
    straight = train_model(data, params, CPU)
    assert resumed.resumed_from_epoch == 2
    assert [s.val_loss for s in resumed.history] == pytest.approx([s.val_loss for s in straight.history])
    assert resumed.history[-1].lr == pytest.approx(straight.history[-1].lr)


def test_the_step_is_chosen_by_device_and_cuda_graph_flag() -> None:
    assert choose_step_kind(RunParams(), CPU) == "plain"
    assert choose_step_kind(RunParams(cuda_graph=True), torch.device("cuda")) == "cuda_graph"
    assert choose_step_kind(RunParams(cuda_graph=False), torch.device("cuda")) == "fixed_shape"
    assert choose_step_kind(RunParams(), torch.device("mps")) == "plain"


def test_fast98_preset_is_the_default_recipe() -> None:
    defaults = RunParams()
    for field, value in PRESETS["fast98"].items():
        assert getattr(defaults, field) == value, field


@pytest.mark.cuda
def test_cuda_graph_training_matches_eager_on_cuda(mnist_tensors: dict[str, torch.Tensor]) -> None:
    cuda = torch.device("cuda")
    data = {k: v.to(cuda) for k, v in small_split(mnist_tensors, 20000, 1000).items()}
    params = RunParams(epochs=2, batch_size=256, precision="fp32")  # 20000 / 256: ragged tail of 32
    graph = train_model(data, params, cuda)
    eager = train_model(data, params, cuda, step_kind="fixed_shape")
    assert graph.step_kind == "cuda_graph" and eager.step_kind == "fixed_shape"
    for g, e in zip(graph.history, eager.history, strict=True):
        assert g.train_loss == pytest.approx(e.train_loss, rel=1e-4)
        assert g.val_accuracy == pytest.approx(e.val_accuracy, abs=2e-3)
    for a, b in zip(graph.model.parameters(), eager.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


@pytest.mark.cuda
def test_cuda_graph_resume_and_bf16(mnist_tensors: dict[str, torch.Tensor], tmp_path: Path) -> None:
    cuda = torch.device("cuda")
    data = {k: v.to(cuda) for k, v in small_split(mnist_tensors, 20000, 1000).items()}
    params = RunParams(epochs=3, batch_size=256, precision="bf16")
    checkpoint = tmp_path / "checkpoint.pt"

    with pytest.raises(KeyboardInterrupt):
        train_model(data, params, cuda, checkpoint, on_epoch=interrupt_after(1))
    resumed = train_model(data, params, cuda, checkpoint)
    assert resumed.resumed_from_epoch == 1 and resumed.precision == "bf16" and resumed.step_kind == "cuda_graph"
    assert resumed.history[-1].val_accuracy > 0.9


@pytest.mark.cuda
def test_compiled_step_trains_on_cuda(mnist_tensors: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmark's torch.compile variant, through train_model's `capture` hook."""
    monkeypatch.syspath_prepend(str(PROJECT_ROOT / "benchmarks"))
    from compiled_step import compile_step

    compiled: list[FixedShapeStep] = []

    def compile_and_record(step: FixedShapeStep) -> Callable[[], None]:
        compiled.append(step)
        return compile_step(step)

    cuda = torch.device("cuda")
    data = {k: v.to(cuda) for k, v in small_split(mnist_tensors, 20000, 1000).items()}
    params = RunParams(epochs=2, precision="fp32")
    # autograd's gradients, as the benchmark measures it: the written-out ones fill each .grad with `out=`, which
    # inductor's CUDA-graph trees refuse ("accessing tensor output of CUDAGraphs that has been overwritten").
    result = train_model(data, params, cuda, step_kind="fixed_shape", capture=compile_and_record, gradients="autograd")
    assert len(compiled) == 1 and compiled[0].replay is not compiled[0].run
    assert result.setup_seconds > 0 and result.history[-1].val_accuracy > 0.9


def test_capture_is_used_once_and_skipped_when_nothing_is_left_to_train(
    synthetic_tensors: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    """A fixed-shape step replays what `capture` returns; a run resumed after its last epoch captures nothing."""
    captured: list[FixedShapeStep] = []
    replays: list[int] = []

    def capture(step: FixedShapeStep) -> Callable[[], None]:
        captured.append(step)

        def replay() -> None:
            replays.append(1)
            step.run()

        return replay

    params = RunParams(epochs=2, batch_size=64, hidden_sizes=[16])
    checkpoint = tmp_path / "checkpoint.pt"
    first = train_model(synthetic_tensors, params, CPU, checkpoint, step_kind="fixed_shape", capture=capture)
    steps_per_epoch = -(-len(synthetic_tensors["train_images"]) // 64)
    assert len(captured) == 1 and len(replays) == 2 * steps_per_epoch
    again = train_model(synthetic_tensors, params, CPU, checkpoint, step_kind="fixed_shape", capture=capture)
    assert len(captured) == 1, "a run with no epoch left to train must not capture (a CUDA graph costs ~1 s)"
    assert again.resumed_from_epoch == 2 and again.setup_seconds == 0.0
    assert [s.val_loss for s in again.history] == [s.val_loss for s in first.history]
    with pytest.raises(TrainingError, match="only a fixed-shape step can be captured"):
        train_model(synthetic_tensors, params, CPU, step_kind="plain", capture=capture)


def test_precision_auto_is_fp32_and_bf16_needs_a_cuda_gpu() -> None:
    assert not use_bf16("auto", CPU) and not use_bf16("fp32", CPU)
    with pytest.raises(TrainingError, match="precision='bf16' needs a CUDA GPU"):
        use_bf16("bf16", CPU)
