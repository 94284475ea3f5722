"""On-device augmentation (mnist_core/training/augment.py): vectorized over the batch, legible, seeded with the
run, resumed exactly, and inside the fixed-shape step (the one a CUDA graph captures)."""

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from mnist_core.config import RunParams
from mnist_core.records import EpochStats
from mnist_core.training.augment import Augment
from mnist_core.training.loop import train_model
from tests.support.training import small_split

CPU = torch.device("cpu")


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image Pearson correlation of two N x 28 x 28 batches."""
    a, b = a.flatten(1) - a.flatten(1).mean(1, keepdim=True), b.flatten(1) - b.flatten(1).mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-9)


def test_strength_zero_is_the_identity(mnist_tensors: dict[str, torch.Tensor]) -> None:
    images = mnist_tensors["train_images"][:64]
    out = Augment(0.0)(images)
    assert out.shape == (64, 28, 28) and out.dtype == torch.float32
    torch.testing.assert_close(out, images.float() / 255, atol=1e-5, rtol=0)


def test_augmented_digits_differ_but_stay_legible(mnist_tensors: dict[str, torch.Tensor]) -> None:
    """Changed, every one of them, and still their digit: a model trained on augmented digits reads augmented
    digits about as well as clean ones (no model could, were the label lost)."""
    params = RunParams(epochs=2, batch_size=128, lr=0.1, augment=1.0)
    model = train_model(small_split(mnist_tensors, 10000), params, CPU).model
    images, labels = mnist_tensors["val_images"][:1000], mnist_tensors["val_labels"][:1000]
    torch.manual_seed(0)
    out = Augment(1.0)(images)
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert correlation(out, images.float() / 255).max() < 0.995  # every image was changed
    with torch.no_grad():
        as_is = (model(images).argmax(1) == labels).float().mean()
        augmented = (model(out).argmax(1) == labels).float().mean()
    assert augmented > 0.75 and as_is > 0.9, (augmented, as_is)
    # Each image draws its own transform: two copies of one digit come out different.
    twins = Augment(1.0)(images[:1].expand(2, 28, 28))
    assert not torch.equal(twins[0], twins[1])


def test_the_same_seed_draws_the_same_augmentation(mnist_tensors: dict[str, torch.Tensor]) -> None:
    images = mnist_tensors["train_images"][:32]
    torch.manual_seed(5)
    first = Augment(0.7)(images)
    torch.manual_seed(5)
    assert torch.equal(Augment(0.7)(images), first)


@pytest.mark.parametrize("step_kind", ["plain", "fixed_shape"])
def test_training_with_augmentation_learns_and_is_reproducible(
    mnist_tensors: dict[str, torch.Tensor], step_kind: str
) -> None:
    data = small_split(mnist_tensors, 4000)
    params = RunParams(epochs=2, batch_size=128, lr=0.05, augment=0.5)
    first = train_model(data, params, CPU, step_kind=step_kind)
    again = train_model(data, params, CPU, step_kind=step_kind)
    plain = train_model(data, params.model_copy(update={"augment": 0.0}), CPU, step_kind=step_kind)
    assert [s.train_loss for s in first.history] == [s.train_loss for s in again.history]
    assert first.history[0].train_loss != plain.history[0].train_loss  # the batches were augmented
    assert first.history[-1].val_accuracy > 0.85


def test_a_resumed_augmented_run_matches_an_uninterrupted_one(
    mnist_tensors: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    """The augmentation's random numbers come from the generator the checkpoint saves."""
    data = small_split(mnist_tensors, 2000)
    params = RunParams(epochs=3, batch_size=128, lr=0.05, augment=0.8)
    checkpoint = tmp_path / "checkpoint.pt"

    def interrupt_after_2(stats: EpochStats) -> None:
        if stats.epoch == 2:
            raise KeyboardInterrupt

    stop: Callable[[EpochStats], None] = interrupt_after_2
    with pytest.raises(KeyboardInterrupt):
        train_model(data, params, CPU, checkpoint, on_epoch=stop)
    resumed = train_model(data, params, CPU, checkpoint)
    straight = train_model(data, params, CPU)
    assert resumed.resumed_from_epoch == 2
    assert [s.train_loss for s in resumed.history] == [s.train_loss for s in straight.history]


@pytest.mark.cuda
def test_augmentation_inside_the_cuda_graph_draws_anew_each_replay(mnist_tensors: dict[str, torch.Tensor]) -> None:
    cuda = torch.device("cuda")
    data = {k: v.to(cuda) for k, v in small_split(mnist_tensors, 20000, 1000).items()}
    params = RunParams(epochs=2, batch_size=256, augment=0.5, precision="fp32")
    graph = train_model(data, params, cuda)
    eager = train_model(data, params, cuda, step_kind="fixed_shape")
    assert graph.step_kind == "cuda_graph"
    assert graph.history[-1].val_accuracy > 0.9 and eager.history[-1].val_accuracy > 0.9
    # Replays that reused one draw would fit the same 256 images' single augmentation: the loss would collapse.
    assert graph.history[-1].train_loss == pytest.approx(eager.history[-1].train_loss, rel=0.1)
