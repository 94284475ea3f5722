"""Run the `mnist` flow once (same flags as `python flows/mnist.py`) and print its timings as one JSON line.

Used by benchmarks/speed.py, which points PREFECT_API_URL at a running server. Flow wall time is the
`mnist(...)` call itself: interpreter start and imports are reported apart, they are not per-run orchestration.
"""

import json
import resource
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()

from flows.mnist import mnist  # noqa: E402 - imported after the clock starts, to time the imports
from mnist_core.cli import parse_params  # noqa: E402
from mnist_core.config import RunParams  # noqa: E402

MARKER = "FLOW_PROBE "


def main() -> None:
    imported = time.perf_counter()
    params = parse_params(RunParams, sys.argv[1:], description=__doc__)
    called = time.perf_counter()
    result = mnist(params)
    flow_seconds = time.perf_counter() - called
    card = json.loads(Path(result["model_card"]).read_text(encoding="utf-8"))
    # export and promote (the registry stage, after export) time themselves in the flow's result.
    stages = {**card["timings"]["stages"], "export": result["seconds"], "promote": result["promote_seconds"]}
    report = {
        "import_seconds": imported - STARTED,
        "flow_seconds": flow_seconds,
        "stage_seconds": stages,
        "stage_sum_seconds": sum(stages.values()),
        "orchestration_overhead_seconds": flow_seconds - sum(stages.values()),
        "train_seconds": card["timings"]["train_seconds"],
        "test_accuracy": result["test_accuracy"],
        # ru_maxrss is in KiB on Linux: the peak of this whole process, imports and all.
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "run_dir": result["run_dir"],
    }
    print(MARKER + json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
