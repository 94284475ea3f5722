"""The run parameters: one Pydantic model, validated once before any work starts."""

import hashlib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mnist_core.redact import redact_url
from mnist_core.stamps import json_sha256

DatasetName = Literal["mnist", "fashion-mnist"]
OptimizerName = Literal["sgd", "adam", "adamw"]
ScheduleName = Literal["none", "onecycle", "cosine"]
PrecisionName = Literal["auto", "fp32", "bf16"]
PresetName = Literal["fast98", "seed", "robust", "fashion90"]
# Which test images decide a promotion: the dataset's test set, the test part of the user's own images, or both
# pooled (each image counts once).
PromotionMetric = Literal["combined", "test", "extra"]

# The fastest recipe found to reach >= 98.0 % test accuracy with the seed MLP: the fewest epochs whose mean
# validation accuracy over seeds 0-2 is >= 98.0 % (benchmarks/sweep_fast98.py; test looked at only after). It is
# also the defaults of RunParams below, which read their values from here: one source of truth.
FAST98: dict[str, Any] = {
    "optimizer": "sgd",
    "lr": 0.3,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "schedule": "onecycle",
    "label_smoothing": 0.1,
    "batch_size": 256,
    "epochs": 4,
}

# Named recipes. A preset fills only the fields the caller did not set explicitly.
PRESETS: dict[str, dict[str, Any]] = {
    # The seed tutorial's own settings (batch 64, plain SGD lr 0.01), used by the benchmark.
    "seed": {
        "optimizer": "sgd",
        "lr": 0.01,
        "momentum": 0.0,
        "nesterov": False,
        "weight_decay": 0.0,
        "schedule": "none",
        "label_smoothing": 0.0,
        "batch_size": 64,
        "clip_grad_norm": 0.0,
        "outlier_exposure": 0.0,
    },
    "fast98": FAST98,
    # The seed's 784-128-64-10 MLP trained on augmented digits (training/augment.py), for the world's handwriting:
    # >= 98.8 % on MNIST's test set (docs/performance.md, "Augmentation"); ~3 s per epoch on a 2-core CPU.
    "robust": {**FAST98, "augment": 0.6, "epochs": 15},
    # Fashion-MNIST with an MLP at >= 90 % test accuracy (the dataset's published 256-128-64 MLP gets 90.0 %):
    # wider, longer, gentler, with dropout (docs/performance.md); ~4 s per epoch on a 2-core CPU.
    "fashion90": {**FAST98, "hidden_sizes": [512, 256], "epochs": 30, "lr": 0.1, "dropout": 0.2},
}

# Where files go and how a run is named or judged, not what training computes. `preset` is out too: its values
# are already in the fields it filled.
NOT_IN_TRAINING_DIGEST = frozenset(
    {
        "data_dir",
        "output_dir",
        "mirror",
        "run_name",
        "resume",
        "promotion_margin",
        "force_promote",
        "preset",
        "force_retrain",
        "promotion_metric",
        "extra_data",
        "promote",
        "correction_tolerance",
        "torch_export",
        "fused",  # another implementation of the same step: the same weights to float32 rounding
    }
)
# A run learning from corrections repeats them this often: 40 corrections then weigh 800 of 55,000 images.
CORRECTIONS_REPEAT = 20
RUN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]+)?)$"


class RunParams(BaseModel):
    """Everything one training run depends on. Unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    dataset: DatasetName = Field("mnist", description="Which dataset to train on.")
    data_dir: Path = Field(Path("data"), description="Cache folder for downloaded and processed data.")
    output_dir: Path = Field(Path("runs"), description="Output root: run folders, checkpoints, registry.")
    mirror: list[str] = Field(
        default_factory=list,
        description="Extra dataset mirror (folder path or URL), tried after the official ones. Repeatable; "
        "the MNIST_MIRROR environment variable adds more.",
    )
    extra_data: Path | None = Field(
        None,
        description="A folder of your own labelled images, one subfolder per class (0-9, or Fashion-MNIST's class "
        "names): split 70/15/15 into train/val/test with the seed, trained on with the dataset, scored apart.",
    )
    preset: PresetName | None = Field(None, description="Named recipe; explicitly set fields still win.")
    epochs: int = Field(FAST98["epochs"], ge=1, le=1000, description="Training epochs.")
    batch_size: int = Field(FAST98["batch_size"], ge=1, le=60000, description="Training batch size.")
    lr: float = Field(FAST98["lr"], gt=0, le=10, description="Peak learning rate.")
    optimizer: OptimizerName = Field(FAST98["optimizer"], description="Optimizer.")
    momentum: float = Field(FAST98["momentum"], ge=0, lt=1, description="Momentum (SGD) or beta1 (Adam, AdamW).")
    nesterov: bool = Field(FAST98["nesterov"], description="Nesterov momentum (SGD only).")
    weight_decay: float = Field(FAST98["weight_decay"], ge=0, le=1, description="Weight decay.")
    schedule: ScheduleName = Field(FAST98["schedule"], description="Learning-rate schedule.")
    label_smoothing: float = Field(
        FAST98["label_smoothing"], ge=0, lt=1, description="Label smoothing of the cross-entropy loss."
    )
    hidden_sizes: list[Annotated[int, Field(ge=1, le=8192)]] = Field(
        default_factory=lambda: [128, 64], min_length=1, max_length=8, description="Hidden layer widths."
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout after each hidden layer.")
    clip_grad_norm: float = Field(
        2.0,
        ge=0,
        le=1000,
        description="Clip the gradients' global norm to this before each update (0: off). A safety net: the default "
        "recipe's gradients stay under 1.4 on MNIST, so it never clips there; without it, Fashion-MNIST diverged at "
        "lr 0.3.",
    )
    augment: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Strength of on-device augmentation of training batches (random affine, elastic distortion, "
        "stroke thickness, blur, noise; 1 = the strongest that keeps digits legible); 0 is off.",
    )
    # 0.25: as many non-digits refused as at 0.5, and accuracy unchanged (98.18 % over seeds 0-2, as without it;
    # 0.5 cost 0.1-0.3 points): benchmarks/not_a_digit.py, docs/performance.md.
    outlier_exposure: float = Field(
        0.25,
        ge=0,
        le=10,
        description="Weight of outlier exposure (Hendrycks et al., 2019): images that are not digits "
        '(data/not_digits.py) join each batch, trained towards equal probabilities, so the model can say "not a '
        'digit"; 0 is off.',
    )
    outlier_batch: int = Field(64, ge=1, le=4096, description="Outlier images joining each training batch.")
    outlier_images: int = Field(
        3000, ge=0, le=100_000, description="Outlier images generated once per data folder and dataset to draw from."
    )
    # 0.7 % on validation: the test split's share then stays under 1 % (0.8 % gave 1.02 % for seed 0).
    refusal_rate: float = Field(
        0.007,
        ge=0,
        lt=0.5,
        description='Share of the validation split\'s real images the "not a digit" threshold is fitted to refuse '
        "(the test split's share is measured and recorded in the model card); 0 never refuses.",
    )
    device: str = Field("auto", pattern=DEVICE_PATTERN, description="auto, cpu, cuda, cuda:N or mps.")
    precision: PrecisionName = Field(
        "auto", description="fp32, bf16 autocast (CUDA only), or auto (fp32: as fast as bf16 on a GPU for this MLP)."
    )
    cuda_graph: bool = Field(True, description="On CUDA, capture the training step as a CUDA graph.")
    fused: bool = Field(
        False,
        description="On CUDA, the training step as a few fused Triton kernels (mnist_core/training/fused.py) where "
        "they cover the recipe (SGD, fp32, no dropout, augmentation or clipping); else the step as before. Off until "
        "measured faster on a GPU.",
    )
    seed: int = Field(0, ge=0, lt=2**32, description="Seed for the split, initialisation and shuffling.")
    val_size: int = Field(5000, ge=100, le=30000, description="Images split off the training set for validation.")
    run_name: str | None = Field(
        None,
        pattern=RUN_NAME_PATTERN,
        description="Names the checkpoint to resume; default: derived from the parameters.",
    )
    resume: bool = Field(True, description="Resume from a checkpoint of the same run if one exists.")
    promotion_margin: float = Field(
        0.0, ge=0, le=1, description="A run becomes champion only if its test accuracy beats the champion's by this."
    )
    force_promote: bool = Field(False, description="Promote this run to champion whatever its accuracy.")
    promote: bool = Field(
        True,
        description="Compare the run with the champion and record it in the registry; a sweep's trials leave it to "
        "the sweep, which offers only its best trial.",
    )
    promotion_metric: PromotionMetric = Field(
        "combined",
        description="The test images whose accuracy decides a promotion: combined (the dataset's test set and the "
        "extra images' test part, pooled), test (the dataset's only) or extra (the extra images' only).",
    )
    corrections: bool = Field(
        False,
        description="Also learn from the corrections people sent to `mnist serve` (POST /feedback), read from the "
        "registry's database and the artifact store: the older ones trained on as extra images (repeated "
        "extra_repeat times), the newest correction_holdout share held back; the run is then promoted only if it is "
        "better than the champion on the held-back corrections and not worse on the test set by more than "
        "correction_tolerance.",
    )
    correction_holdout: float = Field(
        0.2, ge=0, lt=1, description="Share of the corrections, the newest, held back to score the run on."
    )
    correction_tolerance: float = Field(
        0.002,
        ge=0,
        le=1,
        description="How much lower (a fraction: 0.002 = 0.2 points) than the champion's a run learning from "
        "corrections may score on the test set and still be promoted.",
    )
    extra_repeat: int = Field(
        1,
        ge=1,
        le=1000,
        description="Times each image of the extra images' training part is repeated in the training set: a few "
        "dozen among 55,000 weigh nothing otherwise. Runs with corrections default to 20.",
    )
    force_retrain: bool = Field(
        False,
        description="Train even when nothing changed since the champion (same data, parameters and code); without "
        "it such a run stops before training, in the state 'Unchanged'.",
    )
    torch_export: bool = Field(
        False,
        description="Also write model.pt2 (torch.export), which `mnist predict --runtime torch-export` reads; "
        "model.onnx and model.safetensors are always written. Off by default: it adds 1-2 s to every export. Not "
        "in the fingerprint: with nothing else changed, add --force-retrain.",
    )

    # Before conversion: Path("") becomes ".", which would silently mean the current folder.
    @field_validator("data_dir", "output_dir", "extra_data", mode="before")
    @classmethod
    def _plain_path(cls, value: Any) -> Any:
        if value is None or not isinstance(value, str | Path):
            return value
        text = str(value)
        if not text.strip() or "\x00" in text:
            raise ValueError("must be a non-empty path without NUL characters")
        # A string, which pydantic then makes the Path: a Path returned here fails its JSON mode (strict: strings
        # only), and RunParams.model_validate_json of its own model_dump_json was refused.
        return str(Path(text).expanduser())

    @field_validator("mirror")
    @classmethod
    def _non_empty_mirrors(cls, value: list[str]) -> list[str]:
        for mirror in value:
            if not mirror.strip() or "\x00" in mirror:
                raise ValueError(f"mirror {mirror!r} must be a non-empty folder path or URL")
        return value

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") in PRESETS:
            return {**PRESETS[data["preset"]], **data}
        return data

    @model_validator(mode="before")
    @classmethod
    def _corrections_weigh(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("corrections") and "extra_repeat" not in data:
            return {**data, "extra_repeat": CORRECTIONS_REPEAT}
        return data

    @model_validator(mode="after")
    def _corrections_are_the_extra_images(self) -> "RunParams":
        if self.corrections and self.extra_data is not None:
            raise ValueError(
                "corrections and extra_data cannot be combined: a run with corrections reads them as its extra "
                "images (export your folder's images as feedback, or train on it in a run of its own)"
            )
        return self

    @model_validator(mode="after")
    def _extra_metric_needs_extra_data(self) -> "RunParams":
        if self.promotion_metric == "extra" and self.extra_data is None:
            raise ValueError("promotion_metric 'extra' needs extra_data (a folder of your own labelled images)")
        return self

    def training_digest(self) -> str:
        """SHA-256 of the fields that change what training computes (not where files go)."""
        relevant = self.model_dump(mode="json", exclude=NOT_IN_TRAINING_DIGEST)
        return json_sha256(relevant)

    def public_dump(self) -> dict[str, Any]:
        """The parameters as JSON values, safe to log or publish: mirror credentials are masked."""
        values = self.model_dump(mode="json")
        values["mirror"] = [redact_url(mirror) for mirror in self.mirror]
        return values

    def checkpoint_name(self) -> str:
        """The run's checkpoint folder: `run_name`, else the training digest, and the extra images' folder when
        there is one (a run with them and one without must not share, and so overwrite, one checkpoint)."""
        if self.run_name:
            return self.run_name
        key = self.training_digest()
        if self.extra_data is not None:
            extra = str(Path(self.extra_data).expanduser().resolve())
            key = hashlib.sha256(f"{key}\0{extra}".encode()).hexdigest()
        return f"{self.dataset}-{key[:16]}"
