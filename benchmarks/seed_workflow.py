"""The seed tutorial's training loop, as the issue describes it, for the side-by-side benchmark.

torchvision's MNIST with ToTensor + Normalize((0.5,), (0.5,)) (the tutorial's 3-channel Normalize is a bug on
1-channel images), DataLoader(batch_size=64, shuffle=True), the 784-128-64-10 MLP, CrossEntropyLoss,
SGD(lr=0.01), one `.to(device)` per batch. Every image goes through PIL on every epoch.
"""

import gzip
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn, optim
from torchvision import datasets, transforms

from mnist_core.data.download import DATASETS, download_dataset

# torchvision looks for the decompressed files under <root>/MNIST/raw/ and, if they are there, never downloads.
RAW_NAMES = {role: name.removesuffix(".gz") for role, (name, _) in DATASETS["mnist"].files.items()}


def torchvision_root(data_dir: Path, mirror: str) -> Path:
    """A torchvision MNIST root built from the project's verified cache (torchvision's own download rejects
    the re-compressed mirror files by MD5 of the .gz, though their content is identical)."""
    files = download_dataset("mnist", data_dir, [mirror]).files
    root = Path(data_dir).expanduser().resolve() / "torchvision"
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for role, name in RAW_NAMES.items():
        target = raw / name
        if not target.is_file():
            partial = target.with_suffix(".part")
            with gzip.open(files[role].path, "rb") as source, open(partial, "wb") as sink:
                shutil.copyfileobj(source, sink)
            partial.replace(target)
    return root


def seed_model() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))


def train_seed(
    root: Path,
    device: torch.device,
    epochs: int,
    batch_size: int = 64,
    lr: float = 0.01,
    seed: int = 0,
    on_epoch: Callable[[int, float], None] | None = None,
) -> tuple[nn.Module, list[float]]:
    """The tutorial loop; returns the model and each epoch's seconds (synchronised, so they are honest)."""
    torch.manual_seed(seed)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    trainset = datasets.MNIST(str(root), download=True, train=True, transform=transform)
    trainloader = torch.utils.data.DataLoader(trainset, batch_size=batch_size, shuffle=True)
    model = seed_model().to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(model.parameters(), lr=lr)
    seconds = []
    for epoch in range(epochs):
        started = time.perf_counter()
        for images, labels in trainloader:
            images, labels = images.view(images.shape[0], -1).to(device), labels.to(device)
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - started)
        if on_epoch is not None:
            on_epoch(epoch + 1, seconds[-1])
    return model, seconds


@torch.no_grad()
def test_accuracy_seed(model: nn.Module, root: Path, device: torch.device) -> float:
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    testset = datasets.MNIST(str(root), download=True, train=False, transform=transform)
    correct = 0
    model.eval()
    for images, labels in torch.utils.data.DataLoader(testset, batch_size=1000):
        logits = model(images.view(images.shape[0], -1).to(device))
        correct += (logits.argmax(1).cpu() == labels).sum().item()
    return correct / len(testset)
