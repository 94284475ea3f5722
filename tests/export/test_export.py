import hashlib
import json

import numpy as np
import onnx
import onnxruntime
import pandas as pd
import pytest
import torch

from mnist_core import layout
from mnist_core.config import RunParams
from mnist_core.data.idx import CLASS_NAMES
from mnist_core.evaluation.evaluate import evaluate_model
from mnist_core.export.run_folder import export_run, onnx_model_bytes, run_files
from mnist_core.layout import RUN_FILES
from mnist_core.records import ModelCard
from mnist_core.training.loop import train_model
from mnist_core.training.model import MLP, load_weights
from tests.support.records import make_card, make_test_split


@pytest.fixture(scope="module")
def exported_run(mnist_tensors: dict[str, torch.Tensor], tmp_path_factory: pytest.TempPathFactory):
    params = RunParams(epochs=1)
    result = train_model(mnist_tensors, params, torch.device("cpu"))
    evaluation = evaluate_model(result.model, mnist_tensors["test_images"], mnist_tensors["test_labels"],
                                CLASS_NAMES["mnist"])  # fmt: skip
    card = make_card("run-1", evaluation.accuracy).model_copy(update={"files": run_files(torch_export=False)})
    output_root = tmp_path_factory.mktemp("out")
    test_split = (mnist_tensors["test_images"], mnist_tensors["test_labels"])
    exported = export_run(output_root, result.model, card, result.history, evaluation, test_split)
    assert exported.card == card.model_copy(update={"model_files": exported.card.model_files})
    assert exported.model == exported.run_dir / layout.WEIGHTS_FILE
    return exported.run_dir, evaluation


def test_run_folder_has_every_file(exported_run) -> None:
    run_dir, _ = exported_run
    names = {item.name for item in run_dir.iterdir()}
    assert names == {
        layout.WEIGHTS_FILE, layout.ONNX_FILE,  # model.pt2 only with torch_export (tests/inference has one)
        layout.METRICS_FILE,
        layout.PER_CLASS_FILE, layout.CONFUSION_FILE, layout.REPORT_FILE, layout.CARD_FILE,
        *layout.PLOT_FILES,
    }  # fmt: skip
    assert not [item for item in run_dir.parent.iterdir() if item.name.endswith(".part")]
    card = json.loads((run_dir / layout.CARD_FILE).read_text())
    assert 0.9 < card["metrics"]["test_accuracy"] <= 1.0  # a fraction, not a percentage
    assert card["run_id"] == "run-1"
    assert ModelCard.model_validate(card).metrics.test_accuracy == card["metrics"]["test_accuracy"]
    assert set(card["files"]) == names  # the card lists what the folder holds
    metrics = pd.read_csv(run_dir / layout.METRICS_FILE)
    assert {"epoch", "train_loss", "val_loss", "val_accuracy", "seconds", "samples_per_s"} <= set(metrics.columns)
    confusion = pd.read_csv(run_dir / layout.CONFUSION_FILE, index_col=0)
    assert confusion.shape == (10, 10) and confusion.to_numpy().sum() == 10000
    assert "Test accuracy" in (run_dir / layout.REPORT_FILE).read_text()


def test_the_report_shows_the_plots_by_relative_links(exported_run) -> None:
    from PIL import Image

    run_dir, _ = exported_run
    report = (run_dir / layout.REPORT_FILE).read_text()
    for name in layout.PLOT_FILES:
        assert f"]({name})" in report, name  # relative: renders wherever the folder is served or copied
        with Image.open(run_dir / name) as image:
            assert image.format == "PNG" and image.width > 200 and image.height > 200, name


def test_reloaded_weights_give_the_same_test_accuracy(exported_run, mnist_tensors) -> None:
    run_dir, evaluation = exported_run
    model = load_weights(run_dir / layout.WEIGHTS_FILE)
    again = evaluate_model(model, mnist_tensors["test_images"], mnist_tensors["test_labels"], CLASS_NAMES["mnist"])
    assert again.accuracy == evaluation.accuracy
    assert again.loss == pytest.approx(evaluation.loss, rel=1e-6)


def test_the_card_states_each_model_files_contract_and_sha256(exported_run) -> None:
    run_dir, _ = exported_run
    card = ModelCard.model_validate_json((run_dir / layout.CARD_FILE).read_text())
    assert set(card.model_files) == {"model.safetensors", "model.onnx"}
    for name, described in card.model_files.items():
        assert described.sha256 == hashlib.sha256((run_dir / name).read_bytes()).hexdigest(), name
        assert described.output.shape == ["batch", 10] and described.output.dtype == "float32"
    assert card.model_files["model.onnx"].input.dtype == "uint8"
    assert card.model_files["model.onnx"].input.shape == ["batch", 28, 28]
    report = (run_dir / layout.REPORT_FILE).read_text()
    assert all(described.sha256 in report for described in card.model_files.values())


def test_existing_run_folder_is_never_overwritten(exported_run) -> None:
    run_dir, evaluation = exported_run
    before = (run_dir / layout.CARD_FILE).read_bytes()
    with pytest.raises(FileExistsError):
        export_run(run_dir.parent, load_weights(run_dir / layout.WEIGHTS_FILE), make_card(run_dir.name), [],
                   evaluation, make_test_split())  # fmt: skip
    assert (run_dir / layout.CARD_FILE).read_bytes() == before


@pytest.mark.parametrize(("hidden_sizes", "dropout"), [([128, 64], 0.0), ([32, 16, 8], 0.2), ([], 0.0)])
def test_the_onnx_file_written_directly_computes_what_the_model_does(hidden_sizes: list[int], dropout: float) -> None:
    """model.onnx is built node by node from the weights, not traced: it must give PyTorch's logits for any
    architecture RunParams allows (dropout is the identity at inference), any batch size, and keep the contract."""
    torch.manual_seed(0)
    model = MLP(hidden_sizes, dropout, mean=0.2, std=0.35).eval()
    built = onnx.load_from_string(onnx_model_bytes(model))
    onnx.checker.check_model(built, full_check=True)
    session = onnxruntime.InferenceSession(built.SerializeToString(), providers=["CPUExecutionProvider"])
    (images,), (logits,) = session.get_inputs(), session.get_outputs()
    assert (images.name, images.type, images.shape) == ("images", "tensor(uint8)", ["batch", 28, 28])
    assert (logits.name, logits.type, logits.shape) == ("logits", "tensor(float)", ["batch", 10])
    for batch in (1, 7, 300):
        pixels = np.random.default_rng(batch).integers(0, 256, (batch, 28, 28), dtype=np.uint8)
        with torch.no_grad():
            expected = model(torch.from_numpy(pixels)).numpy()
        got = session.run(None, {"images": pixels})[0]
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
        assert (got.argmax(1) == expected.argmax(1)).all()


def test_model_pt2_only_when_asked_for(tmp_path) -> None:
    assert layout.EXPORTED_PROGRAM_FILE not in run_files(torch_export=False)
    assert run_files(torch_export=True) == RUN_FILES
    assert RunParams().torch_export is False
    assert RunParams(torch_export=True).training_digest() == RunParams().training_digest()  # not a retrain
