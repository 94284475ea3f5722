"""What the stages hand each other: small, frozen, typed records of paths and facts (never tensors or modules).

`download -> Downloaded -> transform -> Prepared -> train -> Trained -> evaluate -> Evaluation -> export -> Exported
-> promote -> Promotion`. Each fact about a run is written once, in the `ModelCard` that export builds from these;
the registry row and the champion pointer are derived from the card (see registry/store.py).
"""

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from mnist_core.layout import CARD_FILE, REPORT_FILE, WEIGHTS_FILE

# manual and rollback: decided by a person with `mnist registry promote` / `rollback`, not by the rule.
PromotionKind = Literal["first", "better", "forced", "replaced", "kept", "manual", "rollback"]


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DatasetFile(Record):
    path: Path
    sha256: str  # of the decompressed IDX content
    source: str  # the mirror it came from (credentials masked), or "cache"


class Downloaded(Record):
    dataset: str
    files: dict[str, DatasetFile]  # role (train_images, train_labels, test_images, test_labels) -> file

    @property
    def sha256(self) -> dict[str, str]:
        return {role: file.sha256 for role, file in self.files.items()}


class Prepared(Record):
    """The validated, split uint8 tensors, cached in one safetensors file."""

    dataset: str
    path: Path
    # split -> number of images: train, val (both including the user's extra images), test, and extra_train,
    # extra_val, extra_test (the user's images in each; extra_test is scored apart from test)
    sizes: dict[str, int]
    mean: float  # of the training pixels (0-1): the model's input normalization
    std: float
    extra_sha256: str | None = None  # of the extra labelled images' manifest, when the run has them
    extra_manifest: dict[str, str] = {}  # their files ("<class folder>/<file>") -> SHA-256
    outliers: Path | None = None  # images that are not digits, for outlier exposure (data/not_digits.py)


class Corrections(Record):
    """The corrections a run learns from (registry/corrections.py): the older ones as an image folder read as its
    extra images, the newest held back to score the run and the champion on."""

    dataset: str
    folder: Path | None  # None: every usable correction is held back (fewer than two, or all of them newest)
    held_back: Path  # .npz: images (N x 28 x 28 uint8, prepared) and labels (0-9, 10 = not a digit)
    trained_ids: list[int]
    held_back_ids: list[int]
    skipped: list[str] = []  # one line per damaged correction left out


class EpochStats(Record):
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float
    samples_per_s: float


class TrainingSummary(Record):
    """What a training did, without its weights."""

    history: list[EpochStats]
    best_epoch: int  # the epoch whose weights are kept (best validation accuracy, then loss)
    resumed_from_epoch: int = 0
    train_seconds: float = 0.0  # the epochs' own seconds, this attempt and the ones it resumed
    setup_seconds: float = 0.0  # warm-up and CUDA-graph capture, apart from training
    precision: str = "fp32"
    step_kind: str = "plain"
    gradients: str = "autograd"  # or "written_out" (mnist_core/training/backprop.py)
    environment: dict[str, str | int | None] = {}

    @property
    def best(self) -> EpochStats:
        return next(stats for stats in self.history if stats.epoch == self.best_epoch)


class Trained(TrainingSummary):
    model_path: Path  # the best weights (safetensors), kept in the checkpoint folder until the run completes
    checkpoint_dir: Path


class Evaluation(Record):
    """Test-set scores of one model."""

    accuracy: float  # a fraction
    loss: float
    size: int
    per_class: list[dict[str, Any]]  # class, precision, recall, f1, support
    confusion: list[list[int]]  # rows: true class; columns: predicted class
    class_names: list[str]
    extra_accuracy: float | None = None  # on the test part of the user's own images, when the run has them
    extra_size: int = 0


class DatasetFacts(Record):
    name: str
    sha256: dict[str, str]
    sources: dict[str, str]
    sizes: dict[str, int]
    extra_sha256: str | None = None  # of the manifest of the extra labelled images, when the run had them
    extra_manifest: dict[str, str] = {}  # their paths (relative to the folder, label folder first) -> SHA-256


class Timings(Record):
    train_seconds: float
    resumed_from_epoch: int
    warmup_and_capture_seconds: float


class Metrics(Record):
    test_accuracy: float
    test_loss: float
    best_epoch: int
    best_val_accuracy: float
    best_val_loss: float
    epochs_run: int
    extra_test_accuracy: float | None = None  # on the extra images' test part, when the run had them


class Calibration(Record):
    """Temperature scaling's effect: expected calibration error (15 bins) on the test split before and after."""

    test_ece_before: float
    test_ece_after: float
    bins: int = 15


class NotADigitRule(Record):
    """How the model says "not a digit" (Fashion-MNIST: "not a clothing item"): an input whose score is above
    `threshold` is refused. The score is the negative free energy of the logits, -logsumexp(logits) (Liu et al.,
    2020), of a model trained with outlier exposure (Hendrycks et al., 2019); the threshold is fitted on the
    validation split so that `target_false_refusal` of its real images are refused (`val_false_refusal` measured)."""

    method: Literal["energy"] = "energy"
    threshold: float
    target_false_refusal: float
    val_false_refusal: float
    test_false_refusal: float | None = None  # measured on the dataset's test split after fitting
    outliers: str = ""  # what the model was trained against, in words


class MonitoringReference(Record):
    """The model's own answers on its validation split, as `mnist serve` logs answers (evaluation/monitoring.py): the
    baseline `mnist-monitor` compares a window of the prediction log with (docs/monitoring.md)."""

    size: int  # validation images
    class_counts: list[int]  # answers per class 0-9, then "not a digit" (refused by the card's rule)
    not_a_digit_rate: float
    mean_confidence: float  # calibrated (the card's temperature), of the best class, refused answers included
    confidence_quantiles: list[float]  # evenly spaced quantiles (monitoring.REFERENCE_POINTS) of those confidences
    score_quantiles: list[float]  # likewise of the not-a-digit score, -logsumexp(logits)


class TensorSpec(Record):
    name: str
    dtype: str
    shape: list[str | int]  # "batch" for the dynamic dimension
    values: str


class ModelFile(Record):
    """One model file of a run folder: what it is, how to load it, what it takes and gives, its SHA-256."""

    format: str
    load_with: str
    sha256: str
    input: TensorSpec
    output: TensorSpec


class Unchanged(Record):
    """What the `mnist` flow returns when nothing changed since the champion: it did not train."""

    champion_run_id: str
    fingerprint: str
    message: str


class Fingerprint(Record):
    """What determines a run's model (mnist_core/fingerprint.py), and the champion's, when it has the same."""

    value: str
    code_digest: str
    unchanged_since: str | None = None  # the run already trained from this fingerprint: the champion, or a later one

    def unchanged(self) -> Unchanged | None:
        if self.unchanged_since is None:
            return None
        message = (
            f"nothing changed since run {self.unchanged_since} (same data, parameters and code): not retrained; "
            "force_retrain trains anyway"
        )
        return Unchanged(champion_run_id=self.unchanged_since, fingerprint=self.value, message=message)


class ModelCard(Record):
    """Everything needed to trust or reproduce a model: written as `model_card.json` in its run folder."""

    run_id: str
    created_at: str
    params: dict[str, Any]  # as JSON values, mirror credentials masked
    training_digest: str
    fingerprint: str = ""  # of data, parameters and code (absent from cards written before it existed)
    code_digest: str = ""
    dataset: DatasetFacts
    environment: dict[str, str | int | None]
    timings: Timings
    metrics: Metrics
    files: list[str]
    model_files: dict[str, ModelFile] = {}  # file name -> contract and SHA-256 (filled in once the files exist)
    # Calibrated probabilities are softmax(logits / temperature), T fitted on the validation split; the model files
    # emit raw logits. 1.0 (and no calibration) on cards written before calibration existed, which still load.
    temperature: float = 1.0
    calibration: Calibration | None = None
    # None on cards written before it existed (and for runs without outlier exposure): such a model never refuses.
    not_a_digit: NotADigitRule | None = None
    # What the model answers on its validation split, for the drift monitor; None on cards written before it existed
    # (the monitor then says it has no reference).
    monitoring: MonitoringReference | None = None


def read_card(run_dir: Path) -> ModelCard:
    """The model card of a run folder: the one reader. Raises OSError (no such file) or ValueError (not a card)."""
    return ModelCard.model_validate_json((Path(run_dir) / CARD_FILE).read_text(encoding="utf-8"))


class Exported(Record):
    run_id: str
    run_dir: Path
    model: Path
    report: Path
    model_card: Path
    card: ModelCard
    # Where the model files were uploaded, content-addressed (registry/artifacts.py), and the card's own SHA-256
    # there: with them a machine that cannot see run_dir fetches the files. None: only the run folder holds them.
    artifact_store: str | None = None
    card_sha256: str | None = None

    @classmethod
    def in_folder(cls, run_dir: Path, card: ModelCard) -> "Exported":
        """A run folder as export leaves it."""
        return cls(
            run_id=card.run_id,
            run_dir=run_dir,
            model=run_dir / WEIGHTS_FILE,
            report=run_dir / REPORT_FILE,
            model_card=run_dir / CARD_FILE,
            card=card,
        )


class Promotion(Record):
    """The outcome of comparing a run (the challenger) with its dataset's champion. `kind`: first, better, forced,
    replaced (the champion could not be evaluated) or kept."""

    promoted: bool
    kind: PromotionKind
    reason: str
    challenger_accuracy: float
    champion_accuracy: float | None
    champion_run_id: str | None
    margin: float


class RunResult(Record):
    """What the `mnist` flow returns."""

    exported: Exported
    # Its champion_run_id is the champion this run was compared with; None when the run was not offered for
    # promotion (`promote=False`: a sweep's trial).
    promotion: Promotion | None

    @property
    def champion_run_id(self) -> str | None:
        """The dataset's champion once this run was recorded: this run if it was promoted."""
        if self.promotion is None:
            return None
        return self.exported.run_id if self.promotion.promoted else self.promotion.champion_run_id
