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

from prefect.client.orchestration import get_client  # noqa: E402 - imported after the clock starts, to time imports
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId  # noqa: E402

from flows.mnist import mnist  # noqa: E402
from mnist_core.cli import parse_params  # noqa: E402
from mnist_core.config import RunParams  # noqa: E402

MARKER = "FLOW_PROBE "
STAGES = ("download", "transform", "train", "evaluate", "export", "promote")


def stage_seconds(flow_run_id: object, timeout_s: float = 60) -> dict[str, float]:
    """Each stage's task-run duration. Task states reach the server as events, recorded a moment after the flow
    returns: wait until every stage has its final one."""
    deadline = time.monotonic() + timeout_s
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        done = {run.task_key.split("-")[0]: run for run in runs if run.state and run.state.is_final()}
        if set(STAGES) <= set(done):
            return {stage: done[stage].total_run_time.total_seconds() for stage in STAGES}
        if time.monotonic() > deadline:
            raise RuntimeError(f"no final task-run state after {timeout_s} s for {sorted(set(STAGES) - set(done))}")
        time.sleep(0.5)


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
