"""`mnist feedback`: the corrections people sent to `mnist serve` (POST /feedback, the page's "wrong? it was ...").

    mnist feedback ls [--dataset D] [--json]   every correction, oldest first, and how many since the champion
    mnist feedback show ID [--json]            one correction, and the prediction it is about
    mnist feedback export DIR [--dataset D]    their images as a folder `mnist train --extra-data DIR` reads

The corrections are in the registry's database (`<output-dir>/registry.db`, or `--url`, else MNIST_REGISTRY_URL);
their images in the artifact store (MNIST_ARTIFACT_STORE, else `<output-dir>/artifact-store/`). Exit status: 0
done, 1 refused (no such correction, the database or store unreachable), 2 bad usage.
"""

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mnist_core.data.extra import REFUSED_FOLDER  # the folder --extra-data reads as "not a digit"
from mnist_core.registry.registry_command import registry_options

LS_COLUMNS = ["id", "at", "dataset", "label", "predicted_class", "prediction_id", "run_id"]


def parser() -> argparse.ArgumentParser:
    common = registry_options()
    top = argparse.ArgumentParser(
        prog="mnist feedback", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="{ls,show,export}")
    ls = commands.add_parser("ls", parents=[common], help="Every correction, oldest first.")
    ls.add_argument("--dataset", default="mnist")
    ls.add_argument("--json", action="store_true", help="JSON lines.")
    show = commands.add_parser("show", parents=[common], help="One correction.")
    show.add_argument("feedback_id", metavar="ID", type=int)
    show.add_argument("--json", action="store_true")
    export = commands.add_parser("export", parents=[common], help="The images, one folder per class.")
    export.add_argument("folder", metavar="DIR", type=Path)
    export.add_argument("--dataset", default="mnist")
    return top


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    from mnist_core.errors import PipelineError

    try:
        return _run(args)
    except PipelineError as error:
        print(f"mnist feedback: error: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        return 0


def _run(args: argparse.Namespace) -> int:
    from mnist_core.registry.feedback import FeedbackStore

    store = FeedbackStore(args.output_dir, args.url)
    problem = store.registry.missing_folder()
    if problem:
        print(f"mnist feedback: error: {problem}", file=sys.stderr)
        return 1
    if args.command == "ls":
        return _ls(store, args.dataset, args.json)
    if args.command == "show":
        return _show(store, args.feedback_id, args.json)
    written = export(store, args.folder, args.dataset)
    if not written:  # it suggested training on a folder it had not made
        print(f"mnist feedback: no {args.dataset} corrections to export (nothing written)")
        return 0
    print(f"mnist feedback: {sum(written.values())} images in {args.folder} ("
          + ", ".join(f"{name}: {n}" for name, n in sorted(written.items())) + f"); train on them with "
          f"`mnist train --extra-data {args.folder}`")  # fmt: skip
    return 0


def _champion_recorded_at(store: Any, dataset: str) -> tuple[str | None, str | None]:
    """The champion's run id and when it was recorded (right after it was trained), or (None, None)."""
    registry = store.registry.read()
    champion = registry.champion(dataset)
    if champion is None:
        return None, None
    row = registry.row_of(champion.run_id)
    return champion.run_id, (str(row["recorded_at"]) if row is not None else champion.promoted_at)


def _ls(store: Any, dataset: str, as_json: bool) -> int:
    from mnist_core.registry.registry_command import _table

    rows = [_plain(row) for row in store.feedback(dataset)]
    champion, since = _champion_recorded_at(store, dataset)
    newer = sum(1 for row in rows if since is not None and row["at"] >= since)
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(_table(rows, LS_COLUMNS) if rows else "(no feedback recorded)")
    if champion is None:
        print(f"\n{len(rows)} corrections; no {dataset} champion yet")
    else:
        print(f"\n{len(rows)} corrections, {newer} since the champion {champion} was trained ({since})")
    return 0


def _show(store: Any, feedback_id: int, as_json: bool) -> int:
    row = store.one(feedback_id)
    if row is None:
        print(f"mnist feedback: error: no feedback {feedback_id} (`mnist feedback ls` lists them)", file=sys.stderr)
        return 1
    facts = _plain(row)
    prediction = store.prediction(row["prediction_id"]) if row["prediction_id"] else None
    if prediction is not None:
        prediction = {key: value for key, value in prediction.items() if key != "image"}
    if as_json:
        print(json.dumps({"feedback": facts, "prediction": prediction}))
        return 0
    print("\n".join(f"{key}: {'-' if value is None else value}" for key, value in facts.items()))
    if prediction is not None:
        print("\nprediction:")
        print("\n".join(f"{key}: {'-' if value is None else value}" for key, value in prediction.items()))
    return 0


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in row.items() if key != "key"}


def export(store: Any, folder: Path, dataset: str) -> dict[str, int]:
    """Each correction's image as `<folder>/<class>/<feedback id>.png` (the class folder as --extra-data names it:
    the digit, the Fashion-MNIST class name, or `not-a-digit`); how many per folder. Corrections whose image is gone
    are skipped (said on stderr). The PNG is the prepared 28x28 image, which --extra-data prepares again as is."""
    import numpy as np
    from PIL import Image

    from mnist_core.data.idx import CLASS_NAMES, IMAGE_SIDE
    from mnist_core.errors import PipelineError, StorageError
    from mnist_core.evaluation.novelty import REFUSED_CLASS

    names = [name.replace("/", "_") for name in CLASS_NAMES[dataset]]  # "T-shirt/top": a folder name, not a path
    written: dict[str, int] = {}
    for row in store.feedback(dataset):
        # Found by a fault battery: one missing or damaged image, or a label no class has, stopped the whole export
        # (a traceback for the label); each is now a line, and the others are exported.
        try:
            content = store.image(row)
        except PipelineError as error:
            print(f"mnist feedback: feedback {row['id']}: {error} (skipped)", file=sys.stderr)
            continue
        if content is None:
            print(f"mnist feedback: feedback {row['id']} has no image (skipped)", file=sys.stderr)
            continue
        if row["label"] != REFUSED_CLASS and not 0 <= row["label"] < len(names):
            print(f"mnist feedback: feedback {row['id']}: label {row['label']} is no class of {dataset} (skipped)",
                  file=sys.stderr)  # fmt: skip
            continue
        name = REFUSED_FOLDER if row["label"] == REFUSED_CLASS else names[row["label"]]
        target = Path(folder) / name
        image = np.frombuffer(content, np.uint8).reshape(IMAGE_SIDE, IMAGE_SIDE)
        try:
            target.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, "L").save(target / f"feedback-{row['id']}.png")
        except OSError as error:
            raise StorageError(f"{target}: cannot write the exported images ({error.strerror or error})") from error
        written[name] = written.get(name, 0) + 1
    return written
