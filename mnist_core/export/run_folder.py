"""The export stage: the model card, and a run folder a user can open, written whole or not at all."""

import json
import os
import secrets
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mnist_core.config import RunParams
from mnist_core.data.idx import IMAGE_SIDE
from mnist_core.data.prepare import load_prepared
from mnist_core.errors import StorageError
from mnist_core.evaluation.calibration import calibrate
from mnist_core.evaluation.evaluate import confusion_frame
from mnist_core.evaluation.monitoring import reference_from_logits
from mnist_core.evaluation.novelty import fit_threshold, outlier_scores
from mnist_core.evaluation.plots import (
    plot_confusion,
    plot_curves,
    plot_mistakes,
)
from mnist_core.export.runtimes import IMAGES, LOGITS, describe_model_files
from mnist_core.files import atomic_write_text
from mnist_core.layout import (
    CARD_FILE,
    CONFUSION_FILE,
    CONFUSION_PNG,
    CURVES_PNG,
    EXPORTED_PROGRAM_FILE,
    METRICS_FILE,
    MISTAKES_PNG,
    ONNX_FILE,
    PER_CLASS_FILE,
    REPORT_FILE,
    RUN_FILES,
    WEIGHTS_FILE,
)
from mnist_core.records import (
    Calibration,
    DatasetFacts,
    Downloaded,
    EpochStats,
    Evaluation,
    Exported,
    Fingerprint,
    Metrics,
    ModelCard,
    NotADigitRule,
    Prepared,
    Timings,
    Trained,
)
from mnist_core.stamps import utc_compact, utc_iso
from mnist_core.training.model import MLP, load_weights, save_weights

TestSplit = tuple[torch.Tensor, torch.Tensor]  # test images (uint8 N x 28 x 28) and labels
# In the checkpoint folder: the run folder this training produced, so a rerun after a later failure reuses it.
EXPORTED_MARKER = "exported.json"

# torch.export traces with Dynamo, whose caches and global state are not thread-safe; Prefect runs flows and tasks
# in threads, so two runs in one process export one at a time.
_EXPORT_LOCK = threading.Lock()
# Any batch size at inference; the trace needs an example batch of at least 2 or it specializes the dimension to 1.
_EXAMPLE_BATCH = 4
IMAGE_PIXELS = IMAGE_SIDE * IMAGE_SIDE
ONNX_OPSET = 20  # pinned: ONNX Runtime 1.17 and later run it, and a torch upgrade does not change the file


def run_files(torch_export: bool) -> list[str]:
    """The files a run folder holds: `model.pt2` only when the run asked for it (RunParams.torch_export)."""
    return [name for name in RUN_FILES if torch_export or name != EXPORTED_PROGRAM_FILE]


def new_run_id(training_digest: str) -> str:
    return utc_compact() + f"-{training_digest[:8]}-{secrets.token_hex(3)}"


def build_model_card(
    run_id: str,
    params: RunParams,
    downloaded: Downloaded,
    prepared: Prepared,
    trained: Trained,
    evaluation: Evaluation,
    fingerprint: Fingerprint | None = None,
) -> ModelCard:
    """Everything needed to trust or reproduce the model (accuracies are fractions)."""
    best = trained.best
    return ModelCard(
        run_id=run_id,
        created_at=utc_iso(),
        params=params.public_dump(),
        training_digest=params.training_digest(),
        fingerprint=fingerprint.value if fingerprint else "",
        code_digest=fingerprint.code_digest if fingerprint else "",
        dataset=DatasetFacts(
            name=downloaded.dataset,
            sha256=downloaded.sha256,
            sources={role: file.source for role, file in downloaded.files.items()},
            sizes=prepared.sizes,
            extra_sha256=prepared.extra_sha256,
            extra_manifest=prepared.extra_manifest,
        ),
        environment={
            **trained.environment,
            "precision": trained.precision,
            "step": trained.step_kind,
            "gradients": trained.gradients,
        },
        timings=Timings(
            train_seconds=trained.train_seconds,
            resumed_from_epoch=trained.resumed_from_epoch,
            warmup_and_capture_seconds=trained.setup_seconds,
        ),
        metrics=Metrics(
            test_accuracy=evaluation.accuracy,
            test_loss=evaluation.loss,
            best_epoch=trained.best_epoch,
            best_val_accuracy=best.val_accuracy,
            best_val_loss=best.val_loss,
            epochs_run=len(trained.history),
            extra_test_accuracy=evaluation.extra_accuracy,
        ),
        files=run_files(params.torch_export),
    )


def history_frame(history: list[EpochStats]) -> pd.DataFrame:
    return pd.DataFrame([stats.model_dump() for stats in history], columns=list(EpochStats.model_fields))


def _table(frame: pd.DataFrame, floats: str = "{:.4f}") -> str:
    """A DataFrame as a markdown table (pandas' to_markdown needs tabulate, which we do not depend on)."""
    columns = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in frame.itertuples(index=False):
        cells = [floats.format(v) if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_report(card: ModelCard, history: list[EpochStats], evaluation: Evaluation, run_dir: Path) -> str:
    metrics, timings, models = card.metrics, card.timings, card.model_files
    resumed = f" (resumed after epoch {timings.resumed_from_epoch})" if timings.resumed_from_epoch else ""
    lines = [
        f"# {card.dataset.name} run {card.run_id}",
        "",
        f"**Test accuracy {metrics.test_accuracy:.2%}** (loss {metrics.test_loss:.4f}); best validation accuracy "
        f"{metrics.best_val_accuracy:.2%} at epoch {metrics.best_epoch} of {card.params['epochs']}.",
        "",
        *_calibration_lines(card),
        *_not_a_digit_lines(card),
        *_extra_lines(card),
        "## Plots",
        "",
        "Train loss and accuracy are averaged over each epoch while the weights change, and the train loss includes "
        f"label smoothing ({card.params['label_smoothing']}); validation is measured after each epoch, without it.",
        "",
        f"![Loss and accuracy per epoch]({CURVES_PNG})",
        "",
        f"![Confusion matrix on the test set]({CONFUSION_PNG})",
        "",
        f"![The most confident mistakes on the test set]({MISTAKES_PNG})",
        "",
        "## Where the files are",
        f"Run folder: `{run_dir}`",
        "",
        *[f"- `{name}`" for name in card.files],
        "",
        "## Model files",
        "Each takes `images`, uint8 of shape batch x 28 x 28 (0-255, MNIST form: white ink on black), and gives "
        "`logits`, float32 of shape batch x 10; normalization is inside the model.",
        "",
        "| file | format | load with | SHA-256 |",
        "|---|---|---|---|",
        *[f"| `{name}` | {file.format} | `{file.load_with}` | `{file.sha256}` |" for name, file in models.items()],
        "",
        "## Timings",
        f"- training: {timings.train_seconds:.2f} s over {metrics.epochs_run} epochs{resumed}",
        f"- warm-up and capture: {timings.warmup_and_capture_seconds:.2f} s",
        "- each stage's duration: the task runs of this flow run in the Prefect UI",
        "",
        "## Environment",
        *[f"- {key}: {value}" for key, value in card.environment.items()],
        "",
        "## Parameters",
        "```json",
        json.dumps(card.params, indent=2),
        "```",
        "",
        "## Fingerprint",
        f"`{card.fingerprint or 'not recorded'}`: the SHA-256 of what determines this model (the data below, the "
        f"training parameters, and the code: `mnist_core` sources `{card.code_digest or 'not recorded'}`). A "
        "scheduled retrain whose fingerprint is the champion's stops before training.",
        "",
        "## Data (SHA-256 of the decompressed IDX files)",
        *[f"- {role}: `{digest}`" for role, digest in card.dataset.sha256.items()],
        "",
        "## Per-epoch metrics",
        _table(history_frame(history)),
        "",
        "## Per-class metrics (test set)",
        _table(pd.DataFrame(evaluation.per_class)),
        "",
    ]
    return "\n".join(lines)


def _not_a_digit_lines(card: ModelCard) -> list[str]:
    rule = card.not_a_digit
    if rule is None:
        return []
    test = f", {rule.test_false_refusal:.2%} of the test set" if rule.test_false_refusal is not None else ""
    return [
        f'"Not a digit" when -logsumexp(logits) > {rule.threshold:.3f}: fitted to refuse '
        f"{rule.target_false_refusal:.2%} of the validation split (refuses {rule.val_false_refusal:.2%} there{test}). "
        f"Trained against: {rule.outliers}.",
        "",
    ]


def _calibration_lines(card: ModelCard) -> list[str]:
    if card.calibration is None:
        return []
    ece = card.calibration
    return [
        f"Confidences are calibrated: probabilities = softmax(logits / {card.temperature:.3f}), the temperature "
        f"fitted on the validation split. Expected calibration error on the test set ({ece.bins} bins): "
        f"{ece.test_ece_before:.2%} before, {ece.test_ece_after:.2%} after.",
        "",
    ]


def _extra_lines(card: ModelCard) -> list[str]:
    if card.dataset.extra_sha256 is None:
        return []
    sizes, accuracy = card.dataset.sizes, card.metrics.extra_test_accuracy
    scored = f"**{accuracy:.2%}**" if accuracy is not None else "not scored (no test part)"
    return [
        f"Extra labelled images (`{card.params['extra_data']}`, manifest SHA-256 `{card.dataset.extra_sha256}`, "
        f"{len(card.dataset.extra_manifest)} files; the card lists each file's SHA-256): {sizes.get('extra_train', 0)} "
        f"trained on, {sizes.get('extra_val', 0)} validated on, accuracy on the {sizes.get('extra_test', 0)} held out "
        f"for testing {scored}. Promotion is decided by `promotion_metric={card.params['promotion_metric']}`.",
        "",
    ]


def save_portable(model: MLP, folder: Path, torch_export: bool = False) -> None:
    """`model.onnx` (written directly, `onnx_model_bytes`) and, with `torch_export`, `model.pt2` (torch.export),
    both taking uint8 images of any batch size (IMAGES) and giving logits (LOGITS)."""
    (folder / ONNX_FILE).write_bytes(onnx_model_bytes(model))  # in the staging folder: renamed whole
    if not torch_export:
        return
    example = torch.zeros(_EXAMPLE_BATCH, *IMAGES.shape[1:], dtype=torch.uint8)
    dynamic_shapes = ({0: torch.export.Dim(str(IMAGES.shape[0]))},)
    with _EXPORT_LOCK:
        program = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes)
        torch.export.save(program, folder / EXPORTED_PROGRAM_FILE)


def onnx_model_bytes(model: MLP) -> bytes:
    """The MLP as one self-contained ONNX file, built node by node from its weights: Reshape to N x 784, Cast to
    float, the model's own normalization (Mul 1/255, Sub mean, Div std, as `MLP.normalize`), then Gemm/Relu per
    layer (dropout is the identity at inference). torch.onnx's Dynamo exporter writes the same ten nodes, but
    traces the model and loads its op library first: 1.5-3 s a run against a few milliseconds here
    (docs/performance.md). tests/export checks the file against PyTorch on the test set."""
    import onnx  # here, not at the top: a run that stops as Unchanged never exports
    from onnx import TensorProto, helper, numpy_helper

    def constant(name: str, value: np.ndarray) -> TensorProto:
        return numpy_helper.from_array(np.ascontiguousarray(value), name=name)

    state = {name: tensor.detach().cpu().numpy() for name, tensor in model.state_dict().items()}
    initializers = [
        constant("flat_shape", np.array([-1, IMAGE_PIXELS], dtype=np.int64)),
        # Float32 scalars, as torch computes `x.to(float32).mul_(1 / 255).sub_(mean).div_(std)` in float32.
        constant("scale", np.array(1.0 / 255.0, dtype=np.float32)),
        constant("mean", state["mean"].astype(np.float32)),
        constant("std", state["std"].astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Reshape", [IMAGES.name, "flat_shape"], ["flat"]),
        helper.make_node("Cast", ["flat"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["pixels", "scale"], ["scaled"]),
        helper.make_node("Sub", ["scaled", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["x0"]),
    ]
    current, linear = "x0", 0
    for index, layer in enumerate(model.layers):
        if isinstance(layer, torch.nn.Linear):
            weight, bias = f"layers.{index}.weight", f"layers.{index}.bias"
            initializers += [constant(weight, state[weight]), constant(bias, state[bias])]
            linear += 1
            nodes.append(helper.make_node("Gemm", [current, weight, bias], [f"linear{linear}"], transB=1))
            current = f"linear{linear}"
        elif isinstance(layer, torch.nn.ReLU):
            nodes.append(helper.make_node("Relu", [current], [f"relu{linear}"]))
            current = f"relu{linear}"
        elif not isinstance(layer, torch.nn.Dropout):
            raise TypeError(f"onnx_model_bytes: no ONNX node for {type(layer).__name__}")
    nodes[-1].output[0] = LOGITS.name  # the last Gemm gives the logits
    graph = helper.make_graph(
        nodes,
        "mnist_mlp",
        [helper.make_tensor_value_info(IMAGES.name, TensorProto.UINT8, IMAGES.shape)],
        [helper.make_tensor_value_info(LOGITS.name, TensorProto.FLOAT, LOGITS.shape)],
        initializers,
    )
    opset = helper.make_opsetid("", ONNX_OPSET)
    # The lowest IR version the opset allows: the runtimes that run opset 20 all read it.
    built = helper.make_model(
        graph,
        opset_imports=[opset],
        ir_version=helper.find_min_ir_version_for([opset]),
        producer_name="mnist_core.export",
    )
    onnx.checker.check_model(built)
    return built.SerializeToString()


def write_plots(
    folder: Path, model: MLP, card: ModelCard, history: list[EpochStats], evaluation: Evaluation, test_split: TestSplit
) -> None:
    """The run's PNGs; the mistakes are the exported model's own, on the test images it was scored on."""
    images, labels = test_split
    with torch.no_grad():
        probabilities = torch.softmax(model(images.cpu()) / card.temperature, dim=1)  # as predict reports them
    confidence, predicted = probabilities.max(dim=1)
    if history:
        plot_curves(history, card.metrics.best_epoch, folder / CURVES_PNG, card.dataset.name)
    plot_confusion(evaluation.confusion, evaluation.class_names, folder / CONFUSION_PNG)
    plot_mistakes(
        images.cpu().numpy(),
        labels.cpu().numpy(),
        predicted.numpy(),
        confidence.numpy(),
        evaluation.class_names,
        folder / MISTAKES_PNG,
    )


def _write_files(
    folder: Path,
    run_dir: Path,
    model: MLP,
    card: ModelCard,
    history: list[EpochStats],
    evaluation: Evaluation,
    test_split: TestSplit,
    torch_export: bool = False,
) -> ModelCard:
    cpu_model = MLP(model.hidden_sizes, model.dropout)
    cpu_model.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    cpu_model.eval()
    save_weights(cpu_model, folder / WEIGHTS_FILE)
    write_plots(folder, cpu_model, card, history, evaluation, test_split)
    save_portable(cpu_model, folder, torch_export)
    # The card lists what is in the folder: no model.pt2 unless asked for (tests pass cards listing every file).
    files = [name for name in card.files if torch_export or name != EXPORTED_PROGRAM_FILE]
    card = card.model_copy(update={"model_files": describe_model_files(folder), "files": files})
    history_frame(history).to_csv(folder / METRICS_FILE, index=False)
    pd.DataFrame(evaluation.per_class).to_csv(folder / PER_CLASS_FILE, index=False)
    confusion_frame(evaluation).to_csv(folder / CONFUSION_FILE)
    (folder / REPORT_FILE).write_text(render_report(card, history, evaluation, run_dir), encoding="utf-8")
    (folder / CARD_FILE).write_text(card.model_dump_json(indent=2), encoding="utf-8")
    return card


def export_run(
    output_root: Path,
    model: MLP,
    card: ModelCard,
    history: list[EpochStats],
    evaluation: Evaluation,
    test_split: TestSplit,
    torch_export: bool = False,
) -> Exported:
    """Write the run folder `<output_root>/<card.run_id>` into a hidden temp folder, then rename it into place:
    no half-written run folder, and an existing one is never overwritten. `model.pt2` only with `torch_export`."""
    runs_dir = Path(output_root).expanduser().resolve()
    run_dir = runs_dir / card.run_id
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{card.run_id}.", suffix=".part", dir=runs_dir))
    except OSError as error:
        raise StorageError(f"{runs_dir}: cannot create a run folder there ({error.strerror or error})") from error
    if run_dir.exists():
        shutil.rmtree(staging, ignore_errors=True)
        raise FileExistsError(f"run folder {run_dir} already exists; refusing to overwrite it")
    try:
        card = _write_files(staging, run_dir, model, card, history, evaluation, test_split, torch_export)
        staging.chmod(0o755)  # mkdtemp makes it 0700; a run folder is meant to be read by the team
        os.rename(staging, run_dir)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise StorageError(f"{run_dir}: could not write the run folder ({error}); nothing was left behind") from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Exported.in_folder(run_dir, card)


def export_trained(
    params: RunParams,
    downloaded: Downloaded,
    prepared: Prepared,
    trained: Trained,
    evaluation: Evaluation,
    fingerprint: Fingerprint | None = None,
) -> Exported:
    """The run folder of this training, written once per checkpoint: a rerun after a later stage failed finds the
    folder this checkpoint already produced and reuses it, so one training is never exported (or recorded) twice."""
    marker = trained.checkpoint_dir / EXPORTED_MARKER
    earlier = _read_marker(marker)
    run_id = earlier["run_id"] if earlier else new_run_id(params.training_digest())
    # Rebuilt from the same records on a rerun: the same facts as the card in the folder, bar its creation time.
    card = build_model_card(run_id, params, downloaded, prepared, trained, evaluation, fingerprint)
    if earlier and Path(earlier["run_dir"]).is_dir():
        run_dir = Path(earlier["run_dir"])
        update = {"model_files": describe_model_files(run_dir), **_calibration_of(run_dir)}
        return Exported.in_folder(run_dir, card.model_copy(update=update))
    data = load_prepared(prepared.path)
    test_split = (data["test_images"], data["test_labels"])
    model = load_weights(trained.model_path)
    card = calibrated(card, model, (data["val_images"], data["val_labels"]), test_split)
    exported = export_run(
        Path(params.output_dir), model, card, trained.history, evaluation, test_split, params.torch_export
    )
    atomic_write_text(marker, json.dumps({"run_id": exported.run_id, "run_dir": str(exported.run_dir)}))
    return exported


def calibrated(card: ModelCard, model: MLP, val_split: TestSplit, test_split: TestSplit) -> ModelCard:
    """The card with the temperature fitted on the validation split and the test split's ECE before and after."""
    model = model.cpu().eval()
    with torch.no_grad():
        val_logits, test_logits = (model(images.cpu()).double().numpy() for images, _ in (val_split, test_split))
    if len(val_logits) == 0:
        return card
    fitted = calibrate(val_logits, val_split[1].cpu().numpy(), test_logits, test_split[1].cpu().numpy())
    calibration = Calibration(test_ece_before=fitted["test_ece_before"], test_ece_after=fitted["test_ece_after"])
    update = {"temperature": fitted["temperature"], "calibration": calibration}
    rule = not_a_digit_rule(card.params, val_logits, test_logits)
    # The drift monitor's baseline: the calibrated model's own answers on the same validation logits.
    reference = reference_from_logits(val_logits, fitted["temperature"], rule)
    return card.model_copy(update={**update, "not_a_digit": rule, "monitoring": reference})


def not_a_digit_rule(params: dict[str, Any], val_logits: np.ndarray, test_logits: np.ndarray) -> NotADigitRule | None:
    """The threshold refusing `refusal_rate` of the validation split's images, and what it refuses of the test
    split; None when the run asked for no refusals."""
    rate = float(params.get("refusal_rate", 0.0))
    if rate <= 0:
        return None
    threshold, val_share = fit_threshold(val_logits, rate)
    exposure, pool = float(params.get("outlier_exposure", 0.0)), int(params.get("outlier_images", 0))
    trained_against = (
        f"outlier exposure: weight {exposure:g}, {params.get('outlier_batch')} per batch from {pool} generated "
        "strokes, Hershey glyphs, shapes and textures (data/not_digits.py)"
        if exposure > 0 and pool > 0
        else "none (a model trained on its classes only: the energy baseline)"
    )
    return NotADigitRule(
        threshold=threshold,
        target_false_refusal=rate,
        val_false_refusal=val_share,
        test_false_refusal=float((outlier_scores(test_logits) > threshold).mean()) if len(test_logits) else None,
        outliers=trained_against,
    )


def _calibration_of(run_dir: Path) -> dict[str, Any]:
    """The temperature and calibration the card in an already written run folder holds (none if unreadable)."""
    try:
        written = ModelCard.model_validate_json((run_dir / CARD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {"temperature": written.temperature, "calibration": written.calibration, "not_a_digit": written.not_a_digit,
            "monitoring": written.monitoring}  # fmt: skip


def _read_marker(marker: Path) -> dict[str, str] | None:
    try:
        earlier = json.loads(marker.read_text(encoding="utf-8"))
        return {"run_id": str(earlier["run_id"]), "run_dir": str(earlier["run_dir"])}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise StorageError(
            f"{marker}: unreadable record of this run's export ({error!r}); delete it to export the run again"
        ) from error


def append_to_report(report: Path, section: str) -> None:
    """Add `section` to a run's report once (a retried stage must not append it twice), atomically. A run trained
    on another machine (its report is there) is left as it is: the decision is in the registry and the artifact."""
    if not report.is_file() and not report.parent.is_dir():
        return
    text = report.read_text(encoding="utf-8")
    if section not in text:
        atomic_write_text(report, text.rstrip("\n") + "\n\n" + section)
