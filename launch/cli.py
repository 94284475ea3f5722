"""The `mnist` command: one entry point for everything a user does.

    mnist train [FLAGS]          train, evaluate, export and promote (the `mnist` flow; = python flows/mnist.py)
    mnist predict INPUT...       predict with the champion or any trained model
    mnist predict-batch INPUT... the same as a Prefect flow run (the `mnist-predict` flow; = python flows/predict.py)
    mnist sweep SWEEP_JSON       a hyperparameter sweep (the `mnist-sweep` flow; = python flows/sweep.py)
    mnist serve [FLAGS]          the champion's model over HTTP (page, /predict, v2 protocol, /metrics)
    mnist stack up|down|status   the local Prefect stack: server, work pool, deployments, worker, model server
    mnist registry ls|show|champion|promote|rollback   the run registry (docs/registry.md)
    mnist feedback ls|show|export   corrections sent to `mnist serve`, exported for --extra-data (docs/serving.md)
    mnist monitor [FLAGS]        drift of the champion's inputs (the `mnist-monitor` flow; = python flows/monitor.py)
    mnist settings [--json]      every setting's effective value and where it came from (docs/settings.md)
    mnist services up|down|status --dir DIR   the shared services: PostgreSQL, S3 store, Prefect server
    mnist worker --settings FILE join the work pool from this checkout, after checking the shared services

`mnist --settings FILE COMMAND ...` (or MNIST_SETTINGS=FILE) reads the settings file (docs/settings.md); the
environment wins over it.

`mnist COMMAND --help` lists each command's flags. The arguments are read and checked before torch or Prefect is
imported, so help and usage errors answer at once; the imports then take seconds, during which Ctrl-C exits
quietly (status 130).
"""

import importlib
import importlib.util
import os
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

from launch.entry import hand_over, quiet_interrupts, telemetry_off

# What each command needs imported: checked first, so a Python without the project's packages says what to do.
NEEDS = ("torch", "prefect", "pydantic")


def _missing_packages() -> list[str]:
    return [name for name in NEEDS if importlib.util.find_spec(name) is None]


def train(argv: Sequence[str]) -> int:
    from mnist_core.config import RunParams
    from mnist_core.flags import parse_params

    params = parse_params(RunParams, argv, description=TRAIN_HELP, prog="mnist train")
    if any(urllib.parse.urlsplit(mirror).password for mirror in params.mirror):
        print("mnist train: warning: the password in --mirror is kept with this run's parameters in Prefect's "
              "database (and its UI); put it in MNIST_MIRROR or ~/.netrc instead", file=sys.stderr)  # fmt: skip
    return _runs("mnist").train(params)


def predict(argv: Sequence[str]) -> int:
    from mnist_core.inference.predict_command import main

    hand_over()  # imported: from here on Ctrl-C is the command's own to handle
    return main(argv)


def sweep(argv: Sequence[str], prog: str = "mnist sweep") -> int:
    from mnist_core.sweep import parse_sweep_arguments

    params = parse_sweep_arguments(argv, prog=prog)
    if isinstance(params, int):
        return params
    return _runs("mnist-sweep").run_sweep(params)


def predict_batch(argv: Sequence[str]) -> int:
    from mnist_core.flags import parse_params
    from mnist_core.inference.predict import PredictParams

    params = parse_params(PredictParams, argv, PREDICT_BATCH_HELP, prog="mnist predict-batch", positional="inputs")
    return _runs("mnist-predict").predict_batch(params)


def monitor(argv: Sequence[str]) -> int:
    from mnist_core.flags import parse_params
    from mnist_core.registry.monitoring import MonitorParams

    params = parse_params(MonitorParams, argv, MONITOR_HELP, prog="mnist monitor")
    from mnist_core.registry.database import RegistryStore

    problem = RegistryStore(params.output_dir).missing_folder()  # a read, which would make the folder it names
    if problem:
        print(f"mnist monitor: error: {problem}", file=sys.stderr)
        return 1
    return _runs("mnist-monitor").monitor(params)


def serve(argv: Sequence[str]) -> int:
    from mnist_core.serving.serve_command import main

    hand_over()  # imported: from here on Ctrl-C is the command's own to handle
    return main(argv)


def stack(argv: Sequence[str]) -> int:
    from launch.stack import main

    hand_over()  # imported: from here on Ctrl-C is the command's own to handle
    return main(list(argv))


def registry(argv: Sequence[str]) -> int:
    from mnist_core.registry.registry_command import main

    hand_over()  # imported: from here on Ctrl-C is the command's own to handle
    return main(argv, announce=_announce_champion)


def feedback(argv: Sequence[str]) -> int:
    from mnist_core.registry.feedback_command import main

    hand_over()  # imported: from here on Ctrl-C is the command's own to handle
    return main(argv)


def settings(argv: Sequence[str]) -> int:
    from mnist_core.settings import main

    return main(argv)


def services(argv: Sequence[str]) -> int:
    from launch.services import main

    hand_over()  # imported: from here on Ctrl-C is the command's own to handle
    return main(list(argv))


def worker(argv: Sequence[str]) -> int:
    from launch.worker import main

    hand_over()  # imported: from here on Ctrl-C is the command's own to handle
    return main(list(argv))


def _announce_champion(pointer: Any, text: str) -> None:
    """A champion changed by hand (`mnist registry promote|rollback`) is published where automatic promotions
    are: the `<dataset>-promotion` artifact, in the Prefect API the environment names. Best effort: the registry
    has already recorded it, and no Prefect server is needed to use the registry."""
    if not os.environ.get("PREFECT_API_URL"):
        return
    telemetry_off()
    try:
        # The API client, not prefect.artifacts: outside a flow run that warns (FutureWarning: deprecated) and
        # starts background services whose drain at exit prints "Still processing items".
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import ArtifactCreate

        markdown = f"## Champion / challenger\n**Decision: {pointer.decision}.** {text}\n\n{pointer.promotion.reason}"
        artifact = ArtifactCreate(key=f"{pointer.dataset}-promotion", type="markdown", data=markdown, description=text)
        with get_client(sync_client=True) as client:
            client.create_artifact(artifact)
    except Exception as error:  # noqa: BLE001 - any failure to publish is one line, never the command's failure
        print(f"mnist registry: warning: recorded, but not published to Prefect ({type(error).__name__}: {error})",
              file=sys.stderr)  # fmt: skip


def _runs(program: str):  # noqa: ANN202 - a module
    """launch/runs.py, which imports the flows (torch and Prefect: seconds), Ctrl-C meanwhile exiting quietly."""
    quiet_interrupts(program)
    telemetry_off()
    return importlib.import_module("launch.runs")


TRAIN_HELP = """Train and evaluate the MLP on MNIST (or Fashion-MNIST), export a run folder with report and model
files, and promote the model to champion if it beats the current one. Without PREFECT_API_URL, a Prefect server
is started for the run. When nothing changed since the champion (same data, parameters and code), the run stops
before training unless --force-retrain."""

PREDICT_BATCH_HELP = """Batch inference as a Prefect flow run (the `mnist-predict` flow, recorded in the UI): the class
of every input (images, folders, globs, .npy or IDX files) with the chosen model; a bad input is a row with its
error, never the end of the batch. The CSV goes to --output (default: under <output_dir>/predictions/)."""

MONITOR_HELP = """Drift of what the champion sees, as a Prefect flow run (the `mnist-monitor` flow): its latest
predictions (the prediction log of `mnist serve`) against its answers on its validation split, by four named tests;
a `mnist.drift.detected` event when one is over its threshold. The window and thresholds are settings
(MNIST_MONITOR_WINDOW, MNIST_MONITOR_CLASSES_P, ...: docs/monitoring.md). Exit status 0, or 3 when drift is
detected."""

# The name a command's messages start with (the flows' own, as `python flows/*.py` has always printed them).
PROGRAMS = {"train": "mnist", "sweep": "mnist-sweep", "predict-batch": "mnist-predict", "monitor": "mnist-monitor"}

COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "train": train,
    "predict": predict,
    "predict-batch": predict_batch,
    "sweep": sweep,
    "serve": serve,
    "stack": stack,
    "registry": registry,
    "feedback": feedback,
    "settings": settings,
    "services": services,
    "worker": worker,
    "monitor": monitor,
}


def take_settings_option(args: list[str]) -> tuple[list[str], str | None]:
    """`--settings FILE` / `--settings=FILE` taken out of the arguments (any place before a `--`), so every command
    accepts it without each parser knowing it; returns the other arguments and the file."""
    rest: list[str] = []
    found: str | None = None
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            rest += args[index:]
            break
        if arg == "--settings" and index + 1 < len(args):
            found, index = args[index + 1], index + 2
            continue
        if arg.startswith("--settings="):
            found = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        index += 1
    return rest, found


def use_settings(path: str | None) -> str | None:
    """The settings file (from --settings, else MNIST_SETTINGS) into this process's environment, where Prefect,
    the S3 client and every child process read it; a one-line error, or None."""
    from pathlib import Path

    from mnist_core.settings import SETTINGS_ENV, SettingsError, export_file

    path = path or os.environ.get(SETTINGS_ENV, "").strip() or None
    if not path:
        return None
    try:
        export_file(Path(path))
    except SettingsError as error:
        return str(error)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args, settings_path = take_settings_option(list(sys.argv[1:] if argv is None else argv))
    usage = f"usage: mnist {{{','.join(COMMANDS)}}} ...  (mnist --help, mnist COMMAND --help)"
    if not args:
        print(usage, file=sys.stderr)
        return 2
    if args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"mnist: error: unknown command {args[0]!r}\n{usage}", file=sys.stderr)
        return 2
    # First, before any import that takes time: a library's import can swallow a KeyboardInterrupt (seen: the run
    # went on), so a Ctrl-C now exits at once, quietly, until the command's own handling takes over.
    quiet_interrupts(PROGRAMS.get(args[0], f"mnist {args[0]}"))
    missing = _missing_packages()
    if missing:
        print(
            f"mnist: error: this Python ({sys.executable}) lacks the project's packages ({', '.join(missing)}); "
            "run `make setup` in the project folder, then use .venv/bin/mnist or .venv/bin/python (or "
            "`source .venv/bin/activate`)",
            file=sys.stderr,
        )
        return 1
    problem = use_settings(settings_path)
    if problem:
        print(f"mnist: error: {problem}", file=sys.stderr)
        return 2
    return command(args[1:])


def run_script(command: str, argv: Sequence[str]) -> int:
    """`python flows/<name>.py ARGS` is `mnist COMMAND ARGS`."""
    return main([command, *argv])


if __name__ == "__main__":
    sys.exit(main())
