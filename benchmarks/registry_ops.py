"""Registry operations per second: recording a run (a promotion's whole transaction: the lock, the retry check, the
champion read, the rule, the run's row, its decision and the alias) and reading the champion (what a server polls);
then `mnist registry ls` with --runs runs recorded, as a fresh process (imports included).

    python benchmarks/registry_ops.py                       # SQLite under a temp folder
    MNIST_REGISTRY_URL=postgresql+psycopg://... python benchmarks/registry_ops.py --runs 10000
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from made_up_runs import make_exported  # noqa: E402

from mnist_core.registry.rule import ChampionScore, judge  # noqa: E402
from mnist_core.registry.store import RegistryStore, entries, read_champion  # noqa: E402


def record(store: RegistryStore, root: Path, run_id: str, accuracy: float) -> None:
    run = make_exported(root, run_id, accuracy)
    with store.locked() as registry:
        if store.recover(run, 0.0) is None:
            champion = registry.champion("mnist")
            score = None if champion is None else ChampionScore(champion.run_id, champion.test_accuracy)
            store.commit(*entries(run, judge(accuracy, score, 0.0), champion))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10_000, help="Runs recorded (and listed by `ls`).")
    parser.add_argument("--reads", type=int, default=2_000, help="read_champion calls timed.")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="registry-bench-"))
    store = RegistryStore(root)
    started = time.perf_counter()
    for index in range(args.runs):
        record(store, root, f"run{index:06d}", 0.5 + 0.4 * ((index * 7919) % args.runs) / args.runs)
    record_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(args.reads):
        assert read_champion(root, "mnist") is not None
    read_seconds = time.perf_counter() - started
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, "-m", "launch.cli", "registry", "ls", "--output-dir", str(root)]
    timings = {}
    for flag in ([], ["--json"]):
        started = time.perf_counter()
        done = subprocess.run(command + flag, capture_output=True, text=True, env=env, check=True)
        timings["ls" + "".join(flag)] = round(time.perf_counter() - started, 2)
        lines = len(done.stdout.splitlines())
    print(
        json.dumps(
            {
                "database": store.url.render_as_string(hide_password=True),
                "runs": args.runs,
                "records_per_s": round(args.runs / record_seconds, 1),
                "read_champion_per_s": round(args.reads / read_seconds, 1),
                "ls_seconds": timings,
                "ls_json_lines": lines,
            }
        )
    )


if __name__ == "__main__":
    main()
