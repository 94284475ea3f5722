"""Every file name a run folder and an output folder hold, in one place: what export writes, what the registry,
`mnist predict`, the sweep and the tests read. A run folder is `<output_dir>/<run_id>/`."""

# A run folder
WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"
EXPORTED_PROGRAM_FILE = "model.pt2"
CARD_FILE = "model_card.json"
REPORT_FILE = "report.md"
METRICS_FILE = "metrics.csv"
PER_CLASS_FILE = "per_class.csv"
CONFUSION_FILE = "confusion_matrix.csv"
CURVES_PNG = "curves.png"
CONFUSION_PNG = "confusion_matrix.png"
MISTAKES_PNG = "misclassified.png"
PLOT_FILES = [CURVES_PNG, CONFUSION_PNG, MISTAKES_PNG]
RUN_FILES = [
    WEIGHTS_FILE,
    ONNX_FILE,
    EXPORTED_PROGRAM_FILE,
    METRICS_FILE,
    PER_CLASS_FILE,
    CONFUSION_FILE,
    *PLOT_FILES,
    REPORT_FILE,
    CARD_FILE,
]

# An output folder, beside the run folders
# The registry (a SQLite database, with its -wal and -shm files beside it), and the files it had before, which it
# imports once and leaves as they were.
REGISTRY_DB_FILE = "registry.db"
REGISTRY_FILE = "registry.csv"


def champion_file(dataset: str) -> str:
    """The champion pointer of a dataset."""
    return f"champion-{dataset}.json"
