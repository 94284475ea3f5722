"""The `mnist-sweep` flow: a hyperparameter sweep. Optuna asks for each trial's parameters; each trial is a full
run of the `mnist` flow; the best trial by validation accuracy is offered to the champion/challenger rule.

Where trials run: when the Prefect API has the `mnist/trial` deployment (PREFECT_API_URL pointing at the stack or
any server with deployments/prefect.yaml applied), each trial is a run of it on the `mnist-pool` work pool,
`concurrency` at a time, on whichever workers are free (one per machine or GPU: `prefect worker start --pool
mnist-pool --limit 1`). Otherwise (e.g. Prefect's temporary server) trials run in this process, one after another.
Run `python flows/sweep.py --help`; pass the sweep as JSON: `python flows/sweep.py '{"grid": {"lr": [0.1, 0.3]}}'`.
"""

import flows.entry  # noqa: F401 - first: a Ctrl-C during the imports below exits quietly
import flows.telemetry  # noqa: F401 - before Prefect is imported

# isort: split
import json
import sys
import uuid
from collections.abc import Sequence

from prefect import State, flow, runtime
from prefect.client.schemas.objects import FlowRun
from prefect.logging import get_logger
from pydantic import ValidationError

from flows.local import run_from_command_line
from flows.mnist import mnist
from mnist_core.cli import describe_validation_error
from mnist_core.config import RunParams
from mnist_core.preflight import preflight
from mnist_core.records import Promotion
from mnist_core.sweep import SweepParams
from tasks import download, promote, transform
from tasks.sweep import cancel_trials, run_trials, start_on_pool, trial_mode
from tasks.sweep_results import best_trial, publish_sweep


def _cancel_trials(flow: object, flow_run: FlowRun, state: State) -> None:
    """on_cancellation (Prefect passes these by keyword): the trials this sweep started are cancelled with it. It
    runs after the sweep's own process was stopped, in the runner's."""
    count = cancel_trials(flow_run.id)
    get_logger("mnist.sweep").info("sweep %s cancelled: cancelled %d unfinished trials", flow_run.name, count)


def _run_here(run_params: RunParams, tags: list[str]) -> uuid.UUID:
    """No pool: the trial is a subflow of this sweep, run to its end before the next starts."""
    state = mnist(run_params, return_state=True)
    return state.state_details.flow_run_id


@flow(name="mnist-sweep", log_prints=True, on_cancellation=[_cancel_trials])
def sweep(sweep: SweepParams) -> dict:
    """Run the trials (on the pool, or here), rank them by validation accuracy, offer the best to the champion."""
    base = sweep.base.model_copy(update={"promote": True})
    device = str(preflight(base))
    mode = trial_mode()
    start, concurrency = (start_on_pool, sweep.concurrency) if mode == "pool" else (_run_here, 1)
    print(f"{sweep.planned_trials} trials, {concurrency} at a time ({mode})")
    rows = run_trials(sweep, runtime.flow_run.get_id(), start, concurrency)
    promotion: Promotion | None = None
    best = best_trial(rows) if sweep.promote_best else None
    if best is not None:  # judged like any run: its test accuracy against the champion's, re-scored here
        prepared = transform(download(base.dataset, base.data_dir, base.mirror), base)
        promotion = promote(best, prepared, base, device)
    return publish_sweep(rows, sweep, promotion, mode)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        print("Fields of the sweep JSON:", ", ".join(SweepParams.model_fields))
        return 0 if args else 2
    # Refused before any trial starts, one line per problem.
    if len(args) > 1:
        example = '{"base": {"epochs": 1}, ...}'
        print(f"mnist-sweep: error: expected one argument (the sweep as JSON), got {len(args)}: {args[1:]!r} left "
              f"over; put every setting in the JSON, e.g. '{example}'", file=sys.stderr)  # fmt: skip
        return 2
    try:
        params = SweepParams.model_validate(json.loads(args[0]))
    except json.JSONDecodeError as error:
        print(f"mnist-sweep: error: the sweep is not valid JSON ({error})", file=sys.stderr)
        return 2
    except ValidationError as error:
        print(f"mnist-sweep: error:\n{describe_validation_error(error, as_flags=False)}", file=sys.stderr)
        return 2
    summary, code = run_from_command_line("mnist-sweep", lambda: sweep(params))
    if summary is None:
        return code
    print(json.dumps(summary, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
