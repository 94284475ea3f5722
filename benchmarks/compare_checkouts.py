"""Training speed of two checkouts side by side, in one run: did a change make training slower?

    git worktree add /tmp/before HEAD~1
    python benchmarks/compare_checkouts.py --before /tmp/before --mirror ../shared/data/mnist --rounds 5

Each round trains, in a fresh process per checkout (PYTHONPATH picks the checkout's `mnist_core`), the seed
tutorial's settings (batch 64, SGD lr 0.01) and the default recipe on the same prepared data, alternating which
checkout goes first. Reported: the median seconds per epoch of each, their ratio, and whether both checkouts
computed the same metrics and weights (same seed, same device: they should, bit for bit, unless the change meant
otherwise).
Nothing fails on a timing.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MARKER = "CHECKOUT_RESULT "
RECIPES = {"seed": {"preset": "seed", "epochs": 3}, "default": {}}

# Run inside each checkout: only APIs both sides share (train_model and RunParams), on an already prepared file.
TRAIN = """
import hashlib, json, sys, torch
from safetensors.torch import load_file
from mnist_core.config import RunParams
try:
    from mnist_core.training.loop import train_model
except ImportError:  # a checkout from before the layer packages (Dec 2026)
    from mnist_core.train import train_model
data = load_file(sys.argv[1])
out = {}
for name, overrides in json.loads(sys.argv[2]).items():
    result = train_model(data, RunParams(**overrides), torch.device("cpu"))
    out[name] = {"epoch_seconds": [s.seconds for s in result.history],
                 "metrics": [[s.train_loss, s.val_loss, s.val_accuracy] for s in result.history],
                 "weights_sha256": hashlib.sha256(b"".join(
                     t.detach().cpu().numpy().tobytes() for t in result.model.state_dict().values())).hexdigest()}
print("MARKER" + json.dumps(out))
""".replace("MARKER", MARKER)


def prepared_file(data_dir: Path, mirror: str) -> Path:
    """The default split of MNIST, prepared by this checkout's code (both sides read the same file)."""
    from mnist_core.config import RunParams
    from mnist_core.data.download import download_dataset
    from mnist_core.data.prepare import prepare_dataset

    params = RunParams()
    downloaded = download_dataset("mnist", data_dir, [mirror])
    return prepare_dataset(downloaded, data_dir, params.val_size, params.seed).path


def run_side(checkout: Path, data: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    done = subprocess.run([sys.executable, "-c", TRAIN, str(data), json.dumps(RECIPES)], env=env, cwd=checkout,
                          capture_output=True, text=True)  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARKER)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{checkout}: training failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix(MARKER))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="the other checkout (e.g. a git worktree)")
    parser.add_argument("--after", type=Path, default=PROJECT_ROOT)
    parser.add_argument("--mirror", required=True)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, help="JSON output")
    args = parser.parse_args()
    data = prepared_file(args.data_dir, args.mirror)
    sides = {"before": args.before.resolve(), "after": args.after.resolve()}
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for number in range(args.rounds):
        order = list(sides) if number % 2 == 0 else list(reversed(sides))
        for side in order:
            print(f"round {number + 1}/{args.rounds}: {side}", flush=True)
            runs[side].append(run_side(sides[side], data))
    report: dict = {"checkouts": {side: str(path) for side, path in sides.items()}, "rounds": args.rounds}
    for recipe in RECIPES:
        medians = {
            side: statistics.median(s for run in results for s in run[recipe]["epoch_seconds"])
            for side, results in runs.items()
        }
        pairs = zip(runs["before"], runs["after"], strict=True)
        same = all(
            before[recipe]["metrics"] == after[recipe]["metrics"]
            and before[recipe].get("weights_sha256") == after[recipe].get("weights_sha256")
            for before, after in pairs
        )
        report[recipe] = {"epoch_seconds_median": medians, "after_over_before": medians["after"] / medians["before"],
                          "same_metrics": same}  # fmt: skip
        ratio = medians["after"] / medians["before"]
        print(
            f"{recipe}: s/epoch before {medians['before']:.3f}, after {medians['after']:.3f} "
            f"(after/before {ratio:.3f}); same metrics and weights: {same}"
        )
    if args.out:
        args.out.write_text(json.dumps({**report, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
