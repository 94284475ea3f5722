"""The classifier: the seed tutorial's MLP (784-128-64-10 by default), with input normalization built in."""

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load as safetensors_load
from torch import nn

from mnist_core.data.idx import IMAGE_SIDE, NUM_CLASSES
from mnist_core.errors import DataError
from mnist_core.files import atomic_save_tensors

INPUT_FEATURES = IMAGE_SIDE * IMAGE_SIDE
# Mean and std of MNIST training pixels in [0, 1]; the seed's Normalize(0.5, 0.5) is wrong for this data.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class MLP(nn.Module):
    """Takes raw images (uint8 in 0-255 or float in 0-1; shape N x 784, N x 28 x 28 or N x 1 x 28 x 28)."""

    def __init__(
        self,
        hidden_sizes: Sequence[int] = (128, 64),
        dropout: float = 0.0,
        mean: float = MNIST_MEAN,
        std: float = MNIST_STD,
    ) -> None:
        super().__init__()
        self.hidden_sizes = list(hidden_sizes)
        self.dropout = float(dropout)
        # Buffers, so the exported weights carry the normalization the model was trained with.
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))
        layers: list[nn.Module] = []
        width = INPUT_FEATURES
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden
        layers.append(nn.Linear(width, NUM_CLASSES))
        self.layers = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(self.normalize(images))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """The first layer's input: flattened, uint8 scaled to 0-1, standardized with the model's mean and std."""
        x = images.flatten(1)
        if x.dtype == torch.uint8:  # a fresh float copy: normalized in place
            return x.to(torch.float32).mul_(1.0 / 255.0).sub_(self.mean).div_(self.std)
        return (x - self.mean) / self.std


def save_weights(model: MLP, path: Path) -> None:
    """Weights as safetensors, with the architecture in the metadata so `load_weights` needs nothing else."""
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    metadata = {"architecture": json.dumps({"hidden_sizes": model.hidden_sizes, "dropout": model.dropout})}
    atomic_save_tensors(state, Path(path), metadata, what="model weights")


def weights_from_bytes(content: bytes) -> MLP:
    """A fresh MLP (on the CPU) from the bytes of a safetensors file written by `save_weights`."""
    try:
        architecture = json.loads(safetensors_metadata(content)["architecture"])
        state = safetensors_load(content)
    except Exception as error:
        raise DataError(f"not a model file written by this project ({error})") from error
    model = MLP(architecture["hidden_sizes"], architecture["dropout"])
    model.load_state_dict(state)
    return model


def safetensors_metadata(content: bytes) -> dict[str, str]:
    """The metadata of safetensors bytes: an 8-byte little-endian header length, then the JSON header."""
    length = int.from_bytes(content[:8], "little")
    return json.loads(content[8 : 8 + length])["__metadata__"]


def load_weights(path: Path, device: torch.device | str = "cpu") -> MLP:
    """A fresh MLP with the weights of a safetensors file written by `save_weights` (no unpickling)."""
    try:
        content = Path(path).read_bytes()
    except FileNotFoundError as error:
        raise DataError(f"{path}: model file not found") from error
    except IsADirectoryError as error:
        raise DataError(f"{path}: not a model file written by this project (a folder)") from error
    # A PermissionError goes up as it is: the file may be fine, not being allowed to read it says nothing about it.
    try:
        model = weights_from_bytes(content)
    except DataError as error:
        raise DataError(f"{path}: {error}") from error
    return model.to(device)


EVAL_CHUNK = 10_000


@torch.no_grad()
def evaluate_split(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, bf16: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed loss, number correct (device tensors, no sync) and predictions over a whole split."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=images.device)
    predictions = []
    for start in range(0, len(images), EVAL_CHUNK):
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(images[start : start + EVAL_CHUNK]).float()
        target = labels[start : start + EVAL_CHUNK].long()
        loss_sum += nn.functional.cross_entropy(logits, target, reduction="sum")
        predictions.append(logits.argmax(1))
    model.train(was_training)
    predicted = torch.cat(predictions)
    return loss_sum, (predicted == labels.long()).sum(), predicted
