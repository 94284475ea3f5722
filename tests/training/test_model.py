from pathlib import Path

import torch

from mnist_core.training.model import MLP, load_weights, save_weights


def test_seed_architecture_parameter_count() -> None:
    model = MLP()
    # 784*128+128 + 128*64+64 + 64*10+10
    assert sum(p.numel() for p in model.parameters()) == 109_386


def test_accepts_uint8_and_float_pixels_of_any_layout() -> None:
    torch.manual_seed(0)
    model = MLP().eval()
    pixels = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
    as_float = pixels.float() / 255
    expected = model(pixels)
    torch.testing.assert_close(model(as_float), expected)
    torch.testing.assert_close(model(as_float.reshape(4, 1, 28, 28)), expected)
    torch.testing.assert_close(model(as_float.reshape(4, 784)), expected)


def test_weights_round_trip_with_architecture(tmp_path: Path) -> None:
    model = MLP([32, 16, 8], dropout=0.2).eval()
    save_weights(model, tmp_path / "m.safetensors")
    loaded = load_weights(tmp_path / "m.safetensors").eval()
    assert loaded.hidden_sizes == [32, 16, 8] and loaded.dropout == 0.2
    batch = torch.rand(3, 784)
    torch.testing.assert_close(loaded(batch), model(batch))
