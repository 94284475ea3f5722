"""`mnist registry`: read the registry, and decide about champions by hand.

    mnist registry ls [--dataset D] [--json]        every recorded run, oldest first
    mnist registry show RUN [--json]                one run's row and every decision about it
    mnist registry champion [--dataset D] [--json]  the champion
    mnist registry promote RUN --reason TEXT        make a recorded run champion (a manual decision: who and why)
    mnist registry rollback [--dataset D]           put back the champion the current one replaced (recorded)

The registry is `<output-dir>/registry.db` (SQLite), or the database `--url` or else MNIST_REGISTRY_URL names (see
docs/registry.md). Exit status: 0 done, 1 refused (no such run, nothing to roll back, database unreachable), 2 bad
usage. Arguments are read before pandas or SQLAlchemy is imported, so --help answers at once.
"""

import argparse
import getpass
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# The columns `ls` shows as a table (--json gives every column).
LS_COLUMNS = ["run_id", "recorded_at", "dataset", "test_accuracy", "decision", "champion_run_id"]


def registry_options() -> argparse.ArgumentParser:
    """The options naming a registry (an output root, or a database URL): for `parents=` of each subcommand here
    and in `mnist feedback`."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--output-dir", type=Path, default=Path("runs"), help="Output root (default: runs).")
    common.add_argument(
        "--url", help="Registry database URL (default: MNIST_REGISTRY_URL, else <output-dir>/registry.db)."
    )
    return common


def parser() -> argparse.ArgumentParser:
    common = registry_options()
    top = argparse.ArgumentParser(
        prog="mnist registry", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="{ls,show,champion,promote,rollback}")
    ls = commands.add_parser("ls", parents=[common], help="Every recorded run, oldest first.")
    ls.add_argument("--dataset", help="Only this dataset's runs.")
    ls.add_argument("--json", action="store_true", help="JSON lines, every column.")
    show = commands.add_parser("show", parents=[common], help="One run's row and the decisions about it.")
    show.add_argument("run_id", metavar="RUN")
    show.add_argument("--json", action="store_true")
    champion = commands.add_parser("champion", parents=[common], help="The champion.")
    champion.add_argument("--dataset", default="mnist")
    champion.add_argument("--json", action="store_true")
    promote = commands.add_parser("promote", parents=[common], help="Make a recorded run champion, by hand.")
    promote.add_argument("run_id", metavar="RUN")
    promote.add_argument("--reason", required=True, type=_reason, help="Why (recorded with your user name).")
    rollback = commands.add_parser("rollback", parents=[common], help="Put back the previous champion.")
    rollback.add_argument("--dataset", default="mnist")
    return top


def _reason(text: str) -> str:
    """One line of text: an empty reason, or one with a line break or terminal control codes (which `show` printed
    as they were), is refused (found by a fault battery)."""
    reason = text.strip()
    if not reason:
        raise argparse.ArgumentTypeError("say why (the reason is recorded with the decision)")
    if any(ord(character) < 32 or ord(character) == 127 for character in reason):
        raise argparse.ArgumentTypeError("one line of text, without control characters")
    return reason


def main(argv: Sequence[str], announce: Callable[[Any, str], None] | None = None) -> int:
    """`mnist registry ARGV`; `announce(pointer, text)` is told of a champion changed by hand (the `mnist` command
    publishes it to Prefect)."""
    args = parser().parse_args(list(argv))
    from mnist_core.errors import PipelineError

    try:
        return _run(args, announce)
    except PipelineError as error:
        print(f"mnist registry: error: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        return 0


def _run(args: argparse.Namespace, announce: Callable[[Any, str], None] | None = None) -> int:
    from mnist_core.registry.database import RegistryStore

    store = RegistryStore(args.output_dir, args.url)
    problem = store.missing_folder()
    if problem:
        print(f"mnist registry: error: {problem}", file=sys.stderr)
        return 1
    if args.command == "ls":
        frame = store.read().frame
        if args.dataset:
            frame = frame.loc[frame["dataset"] == args.dataset]
        if args.json:
            for record in json.loads(frame.to_json(orient="records")):
                print(json.dumps(record))
        else:
            print(_table(frame[LS_COLUMNS].to_dict("records")) if len(frame) else "(no runs recorded)")
        return 0
    if args.command == "show":
        registry = store.read()
        row = registry.row_of(args.run_id)
        if row is None:
            print(f"mnist registry: error: no run {args.run_id!r} in the registry", file=sys.stderr)
            return 1
        facts = json.loads(row.to_json())
        decided = registry.decisions(run_id=args.run_id)
        for decision in decided:
            decision.pop("pointer", None)
        if args.json:
            print(json.dumps({"run": facts, "decisions": decided}))
        else:
            print("\n".join(f"{key}: {'' if value is None else value}" for key, value in facts.items()))
            print("\ndecisions:")
            print(_table(decided, ["at", "kind", "promoted", "who", "reason"]))
        return 0
    if args.command == "champion":
        pointer = store.read().champion(args.dataset)
        if pointer is None:
            print(f"mnist registry: error: no {args.dataset} champion yet", file=sys.stderr)
            return 1
        print(pointer.model_dump_json(indent=2) if args.json else _pointer_text(pointer, args.output_dir))
        return 0
    who = getpass.getuser()
    with store.locked():
        if args.command == "promote":
            pointer = store.promote(args.run_id, args.reason, who)
        else:
            pointer = store.rollback(args.dataset, who)
    before = pointer.promotion.champion_run_id if pointer.promotion else None
    text = f"{pointer.dataset} champion: {pointer.run_id} ({pointer.decision} by {who}; it replaces {before or '-'})"
    print(text)
    if announce is not None:
        announce(pointer, text)
    return 0


def _where(pointer: Any, output_dir: Path) -> list[str]:
    """Where the champion's model lives, as this machine sees it: its run folder when this machine has it, and
    always its objects in the store (URI and SHA-256), never only a path that exists on the machine that trained
    it. The card (a few KB, checked against its SHA-256) names the model files' SHA-256s."""
    from mnist_core.errors import PipelineError
    from mnist_core.layout import CARD_FILE
    from mnist_core.records import ModelCard
    from mnist_core.registry.artifacts import ArtifactStore, cache_root

    local = Path(pointer.run_dir) / CARD_FILE
    lines = [f"model: {pointer.model}" if local.is_file() else f"trained in: {pointer.run_dir} (not on this machine)"]
    if not (pointer.artifact_store and pointer.card_sha256):
        return lines + ["store: - (not uploaded: only its run folder holds it)"]
    store = ArtifactStore(pointer.artifact_store)
    lines.append(f"card: {store.uri(pointer.card_sha256)} (SHA-256 {pointer.card_sha256})")
    try:
        card_file = local if local.is_file() else store.fetch(
            store.uri(pointer.card_sha256), pointer.card_sha256, cache_root(output_dir) / pointer.card_sha256 / ".blobs"
        )  # fmt: skip
        card = ModelCard.model_validate_json(card_file.read_text(encoding="utf-8"))
    except (PipelineError, OSError, ValueError) as error:
        return lines + [f"model files: not read ({str(error).splitlines()[0][:200]})"]
    for name, entry in card.model_files.items():
        lines.append(f"{name}: {store.uri(entry.sha256)} (SHA-256 {entry.sha256})")
    return lines


def _pointer_text(pointer: Any, output_dir: Path = Path("runs")) -> str:
    return "\n".join(
        [
            f"dataset: {pointer.dataset}",
            f"run: {pointer.run_id}",
            *_where(pointer, output_dir),
            f"test accuracy (when promoted): {pointer.test_accuracy:.2%}",
            f"promoted at: {pointer.promoted_at} ({pointer.decision})",
            f"replaced: {pointer.previous_run_id or '-'}",
            f"why: {pointer.promotion.reason if pointer.promotion else '-'}",
        ]
    )


def _table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """Rows as aligned text columns (floats as percentages where they are accuracies)."""
    if not rows:
        return "(none)"
    names = columns or list(rows[0])

    def cell(name: str, value: Any) -> str:
        if value is None or (isinstance(value, float) and value != value):
            return "-"
        if isinstance(value, float) and "accuracy" in name:
            return f"{value:.2%}"
        return str(value)

    cells = [[cell(name, row.get(name)) for name in names] for row in rows]
    widths = [max(len(name), *(len(line[index]) for line in cells)) for index, name in enumerate(names)]
    lines = ["  ".join(name.ljust(width) for name, width in zip(names, widths, strict=True))]
    lines += ["  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(line.rstrip() for line in lines)
