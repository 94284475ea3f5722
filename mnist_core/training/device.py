"""The one place where the compute device is chosen."""

import torch

from mnist_core.errors import DeviceError


def resolve_device(requested: str = "auto") -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit device that is missing is an error."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as error:  # "cuda:99999999999999999999": an index torch cannot parse
        raise DeviceError(f"device={requested!r}: {error}; use --device cpu or --device auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device={requested!r} but no CUDA GPU is available (torch {torch.__version__}, "
                f"built for CUDA {torch.version.cuda}); use --device cpu or --device auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device={requested!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device={requested!r} but MPS is not available; use --device cpu or --device auto")
    return device


def describe_environment(device: torch.device) -> dict[str, str | int | None]:
    """What a result depends on besides the parameters: logged at start, stored with the model."""
    info: dict[str, str | int | None] = {
        "torch": str(torch.__version__),
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
