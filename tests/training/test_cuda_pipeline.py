"""The flow's stages on a CUDA GPU, as its tasks call them, without Prefect (which the GPU machine lacks): data
loaded onto the device, the CUDA-graph step with a checkpoint, the best weights saved from the device, loaded back
onto it and scored, the run folder exported, and the exported ONNX model scoring the same on the CPU."""

from pathlib import Path

import pytest
import torch

from mnist_core.config import RunParams
from mnist_core.data.download import download_dataset
from mnist_core.data.idx import CLASS_NAMES
from mnist_core.data.prepare import load_prepared, prepare_dataset
from mnist_core.evaluation.evaluate import evaluate_model
from mnist_core.export.run_folder import export_trained
from mnist_core.export.runtimes import load_predictor
from mnist_core.layout import ONNX_FILE
from mnist_core.records import Trained
from mnist_core.training.checkpoint import CHECKPOINT_FILE, checkpoint_dir
from mnist_core.training.loop import train_model
from mnist_core.training.model import load_weights, save_weights


@pytest.mark.cuda
def test_the_flow_stages_run_on_cuda(mnist_mirror: Path, tmp_path: Path) -> None:
    params = RunParams(epochs=2, device="cuda", data_dir=tmp_path / "data", output_dir=tmp_path / "runs")
    cuda = torch.device("cuda")
    downloaded = download_dataset(params.dataset, params.data_dir, [str(mnist_mirror)])
    prepared = prepare_dataset(downloaded, params.data_dir, params.val_size, params.seed)
    data = load_prepared(prepared.path, cuda)
    assert all(tensor.device.type == "cuda" for tensor in data.values())

    work_dir = checkpoint_dir(params)
    work_dir.mkdir(parents=True)
    result = train_model(data, params, cuda, work_dir / CHECKPOINT_FILE, normalization=(prepared.mean, prepared.std))
    assert result.environment["gpu"] == torch.cuda.get_device_name(cuda)
    # The defaults on CUDA: the graph-captured step, fp32 (`auto`), the written-out gradients.
    assert (result.step_kind, result.precision, result.gradients) == ("cuda_graph", "fp32", "written_out")
    assert (work_dir / CHECKPOINT_FILE).is_file()
    model_path = work_dir / "model.safetensors"
    save_weights(result.model, model_path)
    trained = Trained(**result.model_dump(exclude={"model"}), model_path=model_path, checkpoint_dir=work_dir)

    model = load_weights(model_path, cuda)
    evaluation = evaluate_model(model, data["test_images"], data["test_labels"], CLASS_NAMES[params.dataset])
    assert evaluation.accuracy > 0.96, evaluation.accuracy

    exported = export_trained(params, downloaded, prepared, trained, evaluation)
    assert exported.card.environment["device"] == "cuda"
    onnx = load_predictor(exported.run_dir / ONNX_FILE)
    images, labels = data["test_images"].cpu().numpy(), data["test_labels"].cpu().numpy()
    onnx_accuracy = float((onnx.logits(images).argmax(1) == labels).mean())
    # The same fp32 weights on another device: at most a couple of near-ties may round the other way.
    assert onnx_accuracy == pytest.approx(evaluation.accuracy, abs=2e-4)
