"""Run the `mnist` flow once (same flags as `python flows/mnist.py`) and print its timings as one JSON line.

Used by benchmarks/speed.py, which points PREFECT_API_URL at a running server. Flow wall time is the
`mnist(...)` call itself: interpreter start and imports are reported apart, they are not per-run orchestration.
Each stage's own seconds are Prefect's record of its task run (`total_run_time`), read back from the API.
"""

import json
import resource
import sys
import time

STARTED = time.perf_counter()

import tasks  # noqa: E402 - imported after the clock starts, to time the imports
from flows.mnist import mnist  # noqa: E402
from launch.server import finished_task_runs  # noqa: E402
from mnist_core.config import RunParams  # noqa: E402
from mnist_core.flags import parse_params  # noqa: E402

MARKER = "FLOW_PROBE "
STAGES = tasks.__all__  # one task per stage


def stage_seconds(flow_run_id: object) -> dict[str, float]:
    """Each stage's task-run duration, as Prefect recorded it."""
    done = finished_task_runs(flow_run_id, STAGES)
    return {stage: done[stage].total_run_time.total_seconds() for stage in STAGES}


def main() -> None:
    imported = time.perf_counter()
    params = parse_params(RunParams, sys.argv[1:], description=__doc__)
    called = time.perf_counter()
    state = mnist(params, return_state=True)
    flow_seconds = time.perf_counter() - called
    result = state.result()
    stages = stage_seconds(state.state_details.flow_run_id)
    report = {
        "import_seconds": imported - STARTED,
        "flow_seconds": flow_seconds,
        "stage_seconds": stages,
        "stage_sum_seconds": sum(stages.values()),
        "orchestration_overhead_seconds": flow_seconds - sum(stages.values()),
        "train_seconds": result.exported.card.timings.train_seconds,
        "test_accuracy": result.exported.card.metrics.test_accuracy,
        # ru_maxrss is in KiB on Linux: the peak of this whole process, imports and all.
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "run_dir": str(result.exported.run_dir),
    }
    print(MARKER + json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
