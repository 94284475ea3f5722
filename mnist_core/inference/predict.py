"""Predictions with a trained model: which model (the champion, a run, a file), the inputs brought to MNIST form,
and a table of predictions in which a bad input is a row with its error, never the end of the batch.

Never imports torch itself: with an `.onnx` model (the default runtime) a prediction runs on ONNX Runtime alone.
"""

import csv
import io
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mnist_core.config import DatasetName
from mnist_core.data.idx import CLASS_NAMES
from mnist_core.data.images import IMAGE_SUFFIXES, LoadedInput, load_inputs
from mnist_core.errors import DataError, StorageError
from mnist_core.evaluation.novelty import REFUSED_CLASS, refuse, refused_name
from mnist_core.export.runtimes import RUNTIME_FILES, Predictor, RuntimeName, load_predictor
from mnist_core.files import atomic_write_text
from mnist_core.layout import CARD_FILE, REGISTRY_DB_FILE, REGISTRY_FILE
from mnist_core.records import ModelCard, NotADigitRule, read_card

BATCH = 8192  # images per runtime call: large enough to amortize the call, small enough for any machine's memory
# What --output must not be named like: an input (image, array, IDX) or a model file.
NOT_AN_OUTPUT = IMAGE_SUFFIXES | {".npy", ".gz", ".idx", ".onnx", ".pt2", ".safetensors"}
CSV_COLUMNS = [
    "input", "predicted_class", "class_name", "confidence", "top3", "needs_review", "not_a_digit_score", "error",
]  # fmt: skip


class PredictParams(BaseModel):
    """What to predict and with which model. Unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    inputs: list[str] = Field(
        min_length=1, description="Image files, folders, globs, .npy arrays (N x 28 x 28) or IDX image files."
    )
    model: str = Field(
        "champion",
        min_length=1,
        description="'champion' (of --dataset), a run folder, a run id under --output-dir, or a model file "
        "(.onnx, .pt2, .safetensors).",
    )
    dataset: DatasetName = Field("mnist", description="Whose champion, and the class names for a bare model file.")
    output_dir: Path = Field(Path("runs"), description="The training output root: champions and run folders.")
    runtime: RuntimeName = Field(
        "onnx", description="Which of a run's model files to use: onnx (no torch needed), torch-export or pytorch."
    )
    threshold: float = Field(0.0, ge=0, le=1, description="Predictions less confident than this are marked for review.")
    trust_pt2: bool = Field(
        False,
        description="Allow a .pt2 model: torch.export.load runs code from the file (it unpickles), so only for "
        "files you made yourself.",
    )
    output: Path | None = Field(None, description="Write the predictions to this CSV file.")
    show_prepared: Path | None = Field(
        None,
        description="Write the 28x28 image the model saw for each input to this folder (PNG, named after the "
        "input and the predicted class), to see why a prediction went wrong. Made if missing (in a folder that "
        "exists); never an input's folder.",
    )

    @model_validator(mode="after")
    def _output_is_not_an_input(self) -> "PredictParams":
        """The CSV replaces whatever is at `output`: never an input, a model, a folder, or a training record."""
        if self.output is None:
            return self
        output = Path(self.output).expanduser()
        if output.suffix.lower() in NOT_AN_OUTPUT or output.name.lower().endswith("-ubyte"):
            raise ValueError(f"output {str(self.output)!r} looks like an image or model file; name a .csv file")
        if output.is_dir():
            raise ValueError(f"output {str(self.output)!r} is a folder; name a .csv file in it")
        # The registry's database with its -wal and -shm files, the files it had before, a run folder's files.
        records = output.name == REGISTRY_FILE or output.name.startswith((REGISTRY_DB_FILE, "champion-"))
        if records or (output.parent / CARD_FILE).is_file():
            raise ValueError(
                f"output {str(self.output)!r} would replace one of the training records (the registry, "
                "a champion pointer or a run folder's files); name a .csv file elsewhere"
            )
        if output.exists() and any(
            (source := Path(spec).expanduser()).is_file() and output.samefile(source) for spec in self.inputs
        ):
            raise ValueError(f"output {str(self.output)!r} is one of the inputs; it would be overwritten")
        return self

    @model_validator(mode="after")
    def _show_prepared_is_a_folder_we_may_write(self) -> "PredictParams":
        """Refused before anything is read: a folder that holds inputs (a PNG written there could replace one, and
        the next run would read it back as an input), or one that cannot be written."""
        if self.show_prepared is None:
            return self
        folder = Path(self.show_prepared).expanduser()
        shown = str(self.show_prepared)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"--show-prepared {shown!r} is not a folder")
        existing = folder if folder.is_dir() else folder.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise ValueError(f"--show-prepared {shown!r} is not writable (or its parent folder does not exist)")
        if any(_holds_inputs(folder, spec) for spec in self.inputs):
            raise ValueError(f"--show-prepared {shown!r} holds inputs, which its images could overwrite; name "
                             "another folder")  # fmt: skip
        return self


def _holds_inputs(folder: Path, spec: str) -> bool:
    """Whether `folder` is where `spec` reads its inputs: the input folder itself, the folder of an input file, or
    anywhere under the folder a pattern starts from (a pattern may reach into subfolders)."""
    target = folder.resolve()
    path = Path(spec).expanduser()
    if any(char in spec for char in "*?[") and not path.exists():
        root = Path(re.split(r"[*?\[]", spec, maxsplit=1)[0] or ".").expanduser()
        root = root if root.is_dir() else root.parent
        return target.is_relative_to(root.resolve())
    if path.is_dir():
        return target == path.resolve()
    return path.exists() and target == path.resolve().parent


@dataclass(frozen=True)
class ChosenModel:
    path: Path
    run_id: str | None  # None for a model file outside any run folder
    dataset: str
    class_names: list[str]
    # From the model card: probabilities are softmax(logits / T); 1.0 for a bare model file or an older card.
    temperature: float = 1.0
    # From the model card: when to answer "not a digit"; None (never) for a bare model file or an older card.
    not_a_digit: NotADigitRule | None = None


@dataclass(frozen=True)
class Prediction:
    input: str
    predicted_class: int | None = None
    class_name: str = ""
    confidence: float | None = None
    top3: str = ""
    needs_review: bool = False
    # -logsumexp(logits) (evaluation/novelty.py): above the card's threshold the row's class is "not a digit"
    # (REFUSED_CLASS), while confidence and top3 still describe the best of the dataset's classes.
    not_a_digit_score: float | None = None
    error: str | None = None


@dataclass
class PredictionBatch:
    model: ChosenModel
    runtime: str
    sha256: str
    predictions: list[Prediction]
    seconds: dict[str, float] = field(default_factory=dict)  # part (load model, read inputs, predict) -> seconds

    @property
    def failed(self) -> list[Prediction]:
        return [row for row in self.predictions if row.error]

    @property
    def for_review(self) -> list[Prediction]:
        return [row for row in self.predictions if row.needs_review]


def choose_model(spec: str, output_dir: Path, dataset: str, runtime: RuntimeName) -> ChosenModel:
    """The model file `spec` names: 'champion', a run folder, a run id, or a model file; DataError if none."""
    output_dir = Path(output_dir).expanduser()
    if spec == "champion":
        # The registry (SQLAlchemy) and the store (obstore) only here: `mnist predict --help` and its usage errors
        # paid ~0.4 s for them (found by a docs check: 0.6-0.8 s where the docs say about 0.2 s).
        from mnist_core.registry.artifacts import recorded_run_folder
        from mnist_core.registry.store import read_champion

        champion = read_champion(output_dir, dataset)
        if champion is None:
            raise DataError(
                f"no {dataset} champion in {output_dir.resolve()} yet: train one ({_train_command(dataset)}) or pass "
                "--model"
            )
        # Its run folder where this machine has it, else its files fetched from the artifact store.
        folder = recorded_run_folder(champion, output_dir)
        return _in_run_folder(folder, runtime, f"champion {champion.run_id}'s run folder")
    path = Path(spec).expanduser()
    if path.is_dir():
        return _in_run_folder(path, runtime, "run folder")
    if not path.exists() and (output_dir / spec).is_dir():
        return _in_run_folder(output_dir / spec, runtime, "run folder")
    if not path.exists():
        raise DataError(f"{spec}: no such model file, run folder, or run id under {output_dir.resolve()}")
    card = _read_card(path.parent)
    model_dataset = card.dataset.name if card else dataset
    return ChosenModel(
        path,
        card.run_id if card else None,
        model_dataset,
        CLASS_NAMES[model_dataset],
        _temperature(card),
        card.not_a_digit if card else None,
    )


def _train_command(dataset: str) -> str:
    return "`make run`" if dataset == "mnist" else f"`make run ARGS='--dataset {dataset}'`"


def _read_card(folder: Path) -> ModelCard | None:
    try:
        card = read_card(folder)
    except (OSError, ValueError):
        return None
    return card if card.dataset.name in CLASS_NAMES else None


def _in_run_folder(run_dir: Path, runtime: RuntimeName, what: str) -> ChosenModel:
    card = _read_card(run_dir)
    if card is None:
        raise DataError(f"{run_dir}: not a run folder ({CARD_FILE} missing or unreadable)")
    path = run_dir / RUNTIME_FILES[runtime]
    if not path.is_file():
        hint = " (train with --torch-export to write model.pt2)" if runtime == "torch-export" else ""
        raise DataError(f"{path}: {what} has no {runtime} model{hint}; pick another --runtime")
    return ChosenModel(
        path, card.run_id, card.dataset.name, CLASS_NAMES[card.dataset.name], _temperature(card), card.not_a_digit
    )


def _temperature(card: ModelCard | None) -> float:
    """The card's calibration temperature; 1.0 (raw softmax) when absent or not a positive number."""
    value = card.temperature if card is not None else 1.0
    return float(value) if 0 < value < 1e3 else 1.0


def printable(text: str) -> str:
    """A file name as text any terminal, CSV or API takes: bytes that are not UTF-8 (kept by Python as surrogate
    escapes) become \\xNN instead of failing the whole batch when written."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Probabilities from logits; `temperature` > 1 softens them (calibration, fitted on the validation split)."""
    logits = np.asarray(logits, dtype=np.float64) / temperature
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def predict_loaded(
    loaded: list[LoadedInput], predictor: Predictor, model: ChosenModel, threshold: float
) -> list[Prediction]:
    """One row per input, in input order: its prediction ("not a digit" when the model's card says so), or its
    error. Probabilities are softmax(logits / T), T from the card."""
    good = [index for index, item in enumerate(loaded) if item.image is not None]
    rows = [Prediction(input=printable(item.name), error=item.error and printable(item.error)) for item in loaded]
    if not good:
        return rows
    images = np.stack([loaded[index].image for index in good])
    logits = np.concatenate([predictor.logits(images[start : start + BATCH]) for start in range(0, len(images), BATCH)])
    probabilities = softmax(logits, model.temperature)
    scores, refused = refuse(logits, model.not_a_digit, images)
    ranked = np.argsort(-probabilities, axis=1, kind="stable")[:, :3]
    names = model.class_names
    for index, probs, top, score, no in zip(good, probabilities, ranked, scores, refused, strict=True):
        best = int(top[0])
        rows[index] = Prediction(
            input=printable(loaded[index].name),
            predicted_class=REFUSED_CLASS if no else best,
            class_name=refused_name(model.dataset) if no else names[best],
            confidence=float(probs[best]),
            top3=" ".join(f"{names[int(k)]}:{probs[k]:.3f}" for k in top),
            needs_review=bool(not no and probs[best] < threshold),
            not_a_digit_score=float(score),
        )
    return rows


def predict(params: PredictParams) -> PredictionBatch:
    """Predict every input of `params` with the model it names. A bad model raises DataError; a bad input is a
    row with its error."""
    started = time.perf_counter()
    chosen = choose_model(params.model, params.output_dir, params.dataset, params.runtime)
    predictor = load_predictor(chosen.path, params.trust_pt2)
    loaded_at = time.perf_counter()
    loaded = load_inputs(params.inputs, chosen.dataset)  # the model's dataset decides the images' form
    read_at = time.perf_counter()
    rows = predict_loaded(loaded, predictor, chosen, params.threshold)
    done = time.perf_counter()
    seconds = {"load the model": loaded_at - started, "read the inputs": read_at - loaded_at, "predict": done - read_at}
    if params.show_prepared is not None:
        write_prepared(loaded, rows, params.show_prepared)
    return PredictionBatch(chosen, predictor.runtime, predictor.sha256, rows, seconds)


def prepared_name(index: int, row: Prediction) -> str:
    """`00003-photo.jpg-7.png`: the input's order, its file name (made safe for any file system) and the predicted
    class, so the folder sorts like the table and a wrong reading shows in the name."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(row.input).name)[:80]
    return f"{index:05d}-{name}-{row.class_name}.png"


def write_prepared(loaded: list[LoadedInput], rows: list[Prediction], folder: Path) -> int:
    """The 28x28 image the model saw for each input that could be read, as a PNG in `folder` (made if missing);
    StorageError when it cannot be written. Returns how many were written."""
    from PIL import Image  # only when asked: predicting needs no image writer

    folder = Path(folder).expanduser()
    try:
        folder.mkdir(exist_ok=True)
        written = 0
        for index, (item, row) in enumerate(zip(loaded, rows, strict=True)):
            if item.image is not None:
                Image.fromarray(item.image, "L").save(folder / prepared_name(index, row))
                written += 1
    except OSError as error:
        raise StorageError(f"{folder}: cannot write the prepared images ({error.strerror or error})") from error
    return written


def csv_text(rows: list[Prediction]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({column: "" if value is None else value for column, value in asdict(row).items()})
    return buffer.getvalue()


def write_csv(rows: list[Prediction], path: Path, make_folder: bool = False) -> None:
    """Written whole (atomically). A missing folder is made only when asked (the batch flow's default folder):
    a mistyped --output must not create folders anywhere, e.g. at the filesystem's root."""
    path = Path(path).expanduser()
    if not make_folder and not path.parent.is_dir():
        raise StorageError(f"{path}: cannot write the predictions: folder {path.parent} does not exist")
    try:
        atomic_write_text(path, csv_text(rows))
    except OSError as error:  # not the temp file's name: the user named `path`
        raise StorageError(f"{path}: cannot write the predictions ({error.strerror or error})") from error


def format_table(rows: list[Prediction]) -> str:
    """The predicted rows as aligned text (errors and the review list are printed apart)."""
    header = ("input", "class", "confidence", "top-3")
    cells = [(row.input, row.class_name, f"{row.confidence:.3f}", row.top3) for row in rows if row.error is None]
    widths = [max([len(header[i])] + [len(cell[i]) for cell in cells]) for i in range(len(header))]
    return "\n".join(
        "  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)).rstrip()
        for line in [header, *cells]
    )


def class_counts(rows: list[Prediction], class_names: list[str]) -> dict[str, int]:
    """Rows per class, the dataset's classes first (zeros included), then "not a digit" when some were."""
    counts = dict.fromkeys(class_names, 0)
    for row in rows:
        if row.error is None:
            counts[row.class_name] = counts.get(row.class_name, 0) + 1
    return counts
