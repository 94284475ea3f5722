"""The export stage: a run folder a user can open, written whole or not at all."""

import json
import os
import secrets
import shutil
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from mnist_core.config import RunParams
from mnist_core.download import redact_url
from mnist_core.errors import StorageError
from mnist_core.model import MLP, save_weights

MODEL_FILE = "model.safetensors"
TORCHSCRIPT_FILE = "model.torchscript.pt"
METRICS_FILE = "metrics.csv"
PER_CLASS_FILE = "per_class.csv"
CONFUSION_FILE = "confusion_matrix.csv"
REPORT_FILE = "report.md"
CARD_FILE = "model_card.json"

# torch.jit.script is not thread-safe: two threads scripting at once fail with "Can't redefine method: forward" (its
# type cache), or, on CPython 3.11, a SystemError from ast.parse (gh-106905). Prefect runs flows and tasks in threads.
_SCRIPTING_LOCK = threading.Lock()


def new_run_id(training_digest: str) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{training_digest[:8]}-{secrets.token_hex(3)}"


def public_params(params: RunParams) -> dict[str, Any]:
    """The parameters as JSON values, safe to log or publish: mirror credentials are masked."""
    values = params.model_dump(mode="json")
    values["mirror"] = [redact_url(mirror) for mirror in params.mirror]
    return values


def _table(frame: pd.DataFrame, floats: str = "{:.4f}") -> str:
    """A DataFrame as a markdown table (pandas' to_markdown needs tabulate, which we do not depend on)."""
    columns = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in frame.itertuples(index=False):
        cells = [floats.format(v) if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_report(card: dict[str, Any], metrics: pd.DataFrame, per_class: pd.DataFrame, run_dir: Path) -> str:
    m, env, data, timings = card["metrics"], card["environment"], card["dataset"], card["timings"]
    resumed = f" (resumed after epoch {timings['resumed_from_epoch']})" if timings["resumed_from_epoch"] else ""
    lines = [
        f"# {data['name']} run {card['run_id']}",
        "",
        f"**Test accuracy {m['test_accuracy']:.2%}** (loss {m['test_loss']:.4f}); best validation accuracy "
        f"{m['best_val_accuracy']:.2%} at epoch {m['best_epoch']} of {card['params']['epochs']}.",
        "",
        "## Where the files are",
        f"Run folder: `{run_dir}`",
        "",
        *[f"- `{name}`" for name in card["files"]],
        "",
        "## Timings",
        f"- training: {timings['train_seconds']:.2f} s over {len(metrics)} epochs{resumed}",
        *[f"- {stage}: {seconds:.2f} s" for stage, seconds in timings["stages"].items()],
        "",
        "## Environment",
        *[f"- {key}: {value}" for key, value in env.items()],
        "",
        "## Parameters",
        "```json",
        json.dumps(card["params"], indent=2),
        "```",
        "",
        "## Data (SHA-256 of the decompressed IDX files)",
        *[f"- {role}: `{digest}`" for role, digest in data["sha256"].items()],
        "",
        "## Per-epoch metrics",
        _table(metrics),
        "",
        "## Per-class metrics (test set)",
        _table(per_class),
        "",
    ]
    return "\n".join(lines)


def save_torchscript(model: MLP, path: Path) -> None:
    with _SCRIPTING_LOCK, warnings.catch_warnings():
        # TorchScript is deprecated upstream but remains the format C++ and mobile runtimes load.
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(model).save(str(path))


def export_run(
    output_root: Path,
    run_id: str,
    model: MLP,
    metrics: pd.DataFrame,
    per_class: pd.DataFrame,
    confusion: pd.DataFrame,
    card: dict[str, Any],
) -> Path:
    """Write every file into a hidden temp folder, then rename it into place: no half-written run folder."""
    runs_dir = Path(output_root).expanduser().resolve()
    run_dir = runs_dir / run_id
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{run_id}.", suffix=".part", dir=runs_dir))
    except OSError as error:
        raise StorageError(f"{runs_dir}: cannot create a run folder there ({error.strerror or error})") from error
    if run_dir.exists():
        shutil.rmtree(staging, ignore_errors=True)
        raise FileExistsError(f"run folder {run_dir} already exists; refusing to overwrite it")
    try:
        cpu_model = MLP(model.hidden_sizes, model.dropout)
        cpu_model.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
        cpu_model.eval()
        save_weights(cpu_model, staging / MODEL_FILE)
        save_torchscript(cpu_model, staging / TORCHSCRIPT_FILE)
        metrics.to_csv(staging / METRICS_FILE, index=False)
        per_class.to_csv(staging / PER_CLASS_FILE, index=False)
        confusion.to_csv(staging / CONFUSION_FILE)
        card = {**card, "run_id": run_id, "files": [MODEL_FILE, TORCHSCRIPT_FILE, METRICS_FILE, PER_CLASS_FILE,
                                                   CONFUSION_FILE, REPORT_FILE, CARD_FILE]}  # fmt: skip
        (staging / REPORT_FILE).write_text(render_report(card, metrics, per_class, run_dir), encoding="utf-8")
        (staging / CARD_FILE).write_text(json.dumps(card, indent=2), encoding="utf-8")
        staging.chmod(0o755)  # mkdtemp makes it 0700; a run folder is meant to be read by the team
        os.rename(staging, run_dir)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise StorageError(f"{run_dir}: could not write the run folder ({error}); nothing was left behind") from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return run_dir


def build_model_card(
    params: RunParams,
    files: dict[str, dict[str, str]],
    trained: dict[str, Any],
    evaluation: dict[str, Any],
    history: pd.DataFrame,
    stage_seconds: dict[str, float],
) -> dict[str, Any]:
    """Everything needed to trust or reproduce the model, as JSON-ready values (accuracies are fractions)."""
    best = history.loc[history["epoch"] == trained["best_epoch"]].iloc[0]
    return {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "params": public_params(params),
        "training_digest": params.training_digest(),
        "dataset": {
            "name": params.dataset,
            "sha256": {role: entry["sha256"] for role, entry in files.items()},
            "sources": {role: entry["source"] for role, entry in files.items()},
            "sizes": {"val": params.val_size, "test": evaluation["test_size"]},
        },
        "environment": {**trained["environment"], "precision": trained["precision"], "step": trained["step_kind"]},
        "timings": {
            "train_seconds": trained["train_seconds"],
            "resumed_from_epoch": trained["resumed_from_epoch"],
            "warmup_and_capture_seconds": trained.get("setup_seconds", 0.0),
            "stages": stage_seconds,
        },
        "metrics": {
            "test_accuracy": evaluation["test_accuracy"],
            "test_loss": evaluation["test_loss"],
            "best_epoch": int(trained["best_epoch"]),
            "best_val_accuracy": float(best["val_accuracy"]),
            "best_val_loss": float(best["val_loss"]),
            "epochs_run": len(history),
        },
    }
