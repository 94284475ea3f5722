"""Sweep throughput: trials per minute with 1, 2 and 4 workers on one machine, and dispatch-to-start latency.

    python benchmarks/sweep_scale.py --mirror /work/shared/data/mnist [--workers 1 2 4] [--trials 4]

For each worker count: a fresh stack (launch/stack.py: server, pool, deployments, its worker with --limit 1)
plus N-1 more workers with --limit 1, then `python flows/sweep.py` against it with `concurrency` N and one-epoch
trials; the stack is stopped by PID after. Dispatch to start is each trial run's Running time minus its creation.
A benchmark, not a test: on a 2-core machine more workers than cores only share the cores.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from launch.server import free_port
from launch.stack import DEFAULT_POOL, Stack

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")


def measure(workers: int, trials: int, mirror: str, work: Path) -> dict[str, float]:
    state_dir, port = work / f"stack-{workers}", free_port()
    env = {**os.environ, "MNIST_WORKER_LIMIT": "1", "MNIST_MIRROR": mirror, "PREFECT_HOME": str(state_dir / "home"),
           "PREFECT_WORKER_QUERY_SECONDS": "1"}  # fmt: skip
    stack_cmd = [sys.executable, str(PROJECT_ROOT / "deployments" / "stack.py")]
    where = ["--state-dir", str(state_dir), "--port", str(port)]
    subprocess.run([*stack_cmd, "up", *where], env=env, check=True, capture_output=True)
    stack = Stack(state_dir, "127.0.0.1", port, DEFAULT_POOL)
    api = {**env, "PREFECT_API_URL": stack.api_url}
    extra = [subprocess.Popen([PREFECT, "worker", "start", "--pool", DEFAULT_POOL, "--type", "process", "--name",
                               f"bench-{i}", "--limit", "1"], env={**api, "MNIST_WORKER_NAME": f"bench-{i}"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
             for i in range(1, workers)]  # fmt: skip
    try:
        time.sleep(8)  # the extra workers come online
        base = {"epochs": 1, "data_dir": str(work / "data"), "output_dir": str(work / f"runs-{workers}"),
                "device": "cpu"}  # fmt: skip
        sweep = {"base": base, "ranges": {"lr": {"low": 0.05, "high": 0.5, "log": True}}, "trials": trials,
                 "concurrency": workers, "sampler": "random", "promote_best": False}  # fmt: skip
        started = time.monotonic()
        subprocess.run([sys.executable, str(PROJECT_ROOT / "flows" / "sweep.py"), json.dumps(sweep)], env=api,
                       check=True, capture_output=True)  # fmt: skip
        wall = time.monotonic() - started
        with stack.client() as client:
            runs = [run for run in client.read_flow_runs() if "sweep-trial" in run.tags and run.start_time]
        delays = [(run.start_time - run.created).total_seconds() for run in runs]
        return {
            "workers": workers,
            "trials": trials,
            "wall_s": wall,
            "trials_per_min": trials / wall * 60,
            "dispatch_to_start_median_s": statistics.median(delays),
            "dispatch_to_start_max_s": max(delays),
        }
    finally:
        for process in extra:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        subprocess.run([*stack_cmd, "down", *where], env=env, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mirror", required=True)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mnist-sweep-scale-") as temp:
        results = [measure(count, args.trials, args.mirror, Path(temp)) for count in args.workers]
    lines = [
        "| workers | trials | wall (s) | trials/min | dispatch to start, median / max (s) |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['workers']} | {r['trials']} | {r['wall_s']:.1f} | {r['trials_per_min']:.1f} | "
            f"{r['dispatch_to_start_median_s']:.1f} / {r['dispatch_to_start_max_s']:.1f} |"
        )
    print(json.dumps(results, indent=2))
    print("\n".join(lines))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
