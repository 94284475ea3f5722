"""The sweep: its parameters refused before any trial starts, Optuna's search, the ranking, and a sweep run for
real (in-process here: tests/e2e/test_two_machines.py runs one over two workers of a real pool)."""

import json
from pathlib import Path

import pytest

# Imported here, not inside a test that captures output: Prefect's console log handler keeps the stream that is
# sys.stderr when Prefect is first imported, and a captured one is closed after its test.
from launch.cli import sweep as sweep_command
from mnist_core.config import RunParams
from mnist_core.sweep import SweepParams, ask, make_study, parse_sweep_arguments, ranked


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ({"grid": {}}, "the search space is empty"),
        ({"grid": {"learning_rate": [0.1]}}, "'learning_rate' is not a run parameter"),
        ({"grid": {"output_dir": ["x"]}}, "'output_dir' cannot vary between trials"),
        ({"grid": {"epochs": [1, 0]}}, "invalid epochs"),
        ({"grid": {"lr": []}}, "grid['lr'] has no values"),
        ({"ranges": {"lr": {"low": 0, "high": 1, "log": True}}}, "a log range needs low > 0"),
        ({"ranges": {"lr": {"low": 0.5, "high": 0.1}}}, "must be below high"),
        ({"ranges": {"lr": {"low": 0.01, "high": 100}}}, "invalid lr"),
        ({"grid": {"lr": [0.1]}, "trials": 0}, "trials"),
        ({"grid": {"lr": [0.1]}, "concurency": 2}, "concurency"),
    ],
)
def test_an_invalid_sweep_is_refused_naming_the_field(sweep: dict, message: str) -> None:
    with pytest.raises(ValueError, match="validation error") as error:
        SweepParams.model_validate(sweep)
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (['{"trials": 0}'], "invalid trials: Input should be greater than or equal to 1 (got 0)"),
        (['{"grid": {"lr": [0.1]}, "base": {"epochs": 0}}'], "invalid base.epochs: Input should be greater"),
        (["{nope"], "the sweep is not valid JSON"),
        # Found by a new user: the rest used to be dropped silently, and the sweep ran with defaults.
        (['{"grid": {"lr": [0.1]}}', "--epochs", "1"], "expected one argument (the sweep as JSON), got 3"),
    ],
)
def test_the_command_line_refuses_a_bad_sweep_in_one_line_per_problem(argv: list[str], message: str, capsys) -> None:
    assert sweep_command(argv, prog="mnist-sweep") == 2
    err = capsys.readouterr().err
    assert message in err.strip().splitlines()[-1] and "pydantic.dev" not in err and "Traceback" not in err


def test_the_sweep_can_be_a_file(tmp_path: Path, capsys) -> None:
    """Found by a docs check: `mnist sweep sweep.json` read the file's name as JSON."""
    sweep = tmp_path / "sweep.json"
    sweep.write_text('{"grid": {"lr": [0.1, 0.3]}, "base": {"epochs": 1}}')
    parsed = parse_sweep_arguments([str(sweep)])
    assert isinstance(parsed, SweepParams) and parsed.planned_trials == 2
    assert parse_sweep_arguments([str(tmp_path / "missing.json")]) == 2
    assert "is neither the sweep as JSON nor a file holding it" in capsys.readouterr().err
    sweep.write_text("grid: lr")
    assert parse_sweep_arguments([str(sweep)]) == 2
    assert f"{sweep} is not valid JSON" in capsys.readouterr().err


def test_a_grid_is_a_grid_and_ranges_are_sampled_reproducibly() -> None:
    grid = SweepParams.model_validate({"grid": {"lr": [0.1, 0.3], "batch_size": [64, 128]}, "trials": 10})
    assert grid.planned_trials == 4
    study = make_study(grid)
    asked = [ask(study, grid)[1] for _ in range(4)]
    assert [(values["lr"], values["batch_size"]) for values in asked] == [(0.1, 64), (0.1, 128), (0.3, 64), (0.3, 128)]
    space = {"ranges": {"lr": {"low": 0.01, "high": 1.0, "log": True}, "epochs": {"low": 1, "high": 3,
             "integer": True}}, "trials": 5, "sampler": "random", "seed": 3}  # fmt: skip
    first = [ask(make_study(SweepParams.model_validate(space)), SweepParams.model_validate(space))[1]]
    again = [ask(make_study(SweepParams.model_validate(space)), SweepParams.model_validate(space))[1]]
    assert first == again and 0.01 <= first[0]["lr"] <= 1.0 and first[0]["epochs"] in (1, 2, 3)


def test_trials_rank_by_validation_accuracy_with_failures_last() -> None:
    rows = [{"trial": 1, "val_accuracy": 0.9}, {"trial": 2, "val_accuracy": None}, {"trial": 3, "val_accuracy": 0.95}]
    assert [(row["rank"], row["trial"]) for row in ranked(rows)] == [(1, 3), (2, 1), (3, 2)]


@pytest.mark.slow
def test_a_sweep_in_process_reports_a_diverging_trial_and_promotes_the_best(
    prefect_server,
    mnist_data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No `mnist/trial` deployment on this server: the trials run in the sweep's process, one after another."""
    from flows.sweep import sweep
    from mnist_core.registry.store import read_champion, read_registry
    from tests.support.artifacts import read_artifacts

    # lr 10 diverges (the loss becomes non-finite; without the clipping that would save it): that trial fails, the
    # sweep goes on with the rest.
    # Outlier exposure off: its steady pull towards equal probabilities kept an lr-10 epoch finite.
    base = RunParams(epochs=1, data_dir=mnist_data_dir, output_dir=tmp_path / "runs", clip_grad_norm=0.0,
                     outlier_exposure=0.0)  # fmt: skip
    params = SweepParams(base=base, grid={"lr": [0.3, 10.0]}, trials=3)  # more than the grid has: said so
    state = sweep(params, return_state=True)
    printed = capsys.readouterr()
    said = printed.out + printed.err + caplog.text  # log_prints: a print in a flow goes through Prefect's logger
    assert "3 trials asked for, but the grid has 2 points: running 2" in said
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["trials"] == 2 and summary["completed"] == 1
    [best, diverged] = summary["ranked"]
    assert best["state"] == "COMPLETED" and best["val_accuracy"] > 0.9
    assert diverged["state"] == "FAILED" and diverged["val_accuracy"] is None
    artifacts = read_artifacts(state.state_details.flow_run_id)
    rows = json.loads(artifacts["mnist-sweep-trials"].data)
    assert [row["state"] for row in rows] == ["COMPLETED", "FAILED"] and "diverged" in rows[1]["error"]
    assert "Best trial" in artifacts["mnist-sweep-summary"].data
    # The best trial was offered to the champion rule and recorded like any run; the trials themselves were not.
    registry = read_registry(base.output_dir)
    assert registry["run_id"].tolist() == [Path(summary["best"]["run_dir"]).name]
    champion = read_champion(base.output_dir, "mnist")
    assert champion is not None and champion.run_id == registry["run_id"][0]
    assert summary["promotion"].startswith("no champion yet")


@pytest.mark.slow
def test_a_sweep_none_of_whose_trials_completed_ends_failed_naming_them(
    prefect_server, mnist_data_dir: Path, tmp_path: Path
) -> None:
    """Found by a new user's try: trials that all crashed (a worker without the project's Python) ended in a
    Completed sweep. Here the one trial diverges (lr 10, no clipping, as above): the sweep is Failed, says which
    trial ended how, and its table is published all the same; nothing is promoted."""
    from flows.sweep import sweep
    from mnist_core.registry.store import read_champion
    from tests.support.artifacts import read_artifacts

    base = RunParams(epochs=1, data_dir=mnist_data_dir, output_dir=tmp_path / "runs", clip_grad_norm=0.0,
                     outlier_exposure=0.0)  # fmt: skip
    state = sweep(SweepParams(base=base, grid={"lr": [10.0]}), return_state=True)
    assert state.is_failed(), state
    assert "TrainingError: none of the 1 trials completed (trial 1 FAILED): the trials table says why" in state.message
    rows = json.loads(read_artifacts(state.state_details.flow_run_id)["mnist-sweep-trials"].data)
    assert [row["state"] for row in rows] == ["FAILED"] and "diverged" in rows[0]["error"]
    assert read_champion(base.output_dir, "mnist") is None


@pytest.fixture(scope="module")
def stand_in():  # noqa: ANN201 - a Prefect flow
    """A flow that is never run: its runs are created through the API in whatever state a test needs."""
    from prefect import flow

    @flow(name="stand-in")
    def stand_in() -> None:
        pass

    return stand_in


@pytest.mark.slow
def test_cancelling_a_sweep_cancels_the_trials_it_started_and_only_those(prefect_server, stand_in) -> None:
    import uuid

    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled, Completed, Scheduled

    from flows.sweep import _cancel_trials, sweep
    from tasks.trials import cancel_trials, sweep_tag

    with get_client(sync_client=True) as client:
        sweep_run = client.create_flow_run(stand_in, state=Cancelled())
        waiting = [client.create_flow_run(stand_in, tags=[sweep_tag(sweep_run.id)], state=Scheduled()) for _ in "ab"]
        done = client.create_flow_run(stand_in, tags=[sweep_tag(sweep_run.id)], state=Completed())
        other = client.create_flow_run(stand_in, tags=[sweep_tag(uuid.uuid4())], state=Scheduled())
        # As Prefect calls an on_cancellation hook: by keyword (a positional-only signature failed on the stack).
        _cancel_trials(flow=sweep, flow_run=sweep_run, state=Cancelled())
        states = {run.id: client.read_flow_run(run.id).state_type.value for run in [*waiting, done, other]}
        assert cancel_trials(sweep_run.id) == 0  # nothing left to cancel
    # A run no worker has picked up yet goes straight to Cancelled; a running one would be Cancelling, then stopped.
    assert [states[run.id] for run in waiting] == ["CANCELLED", "CANCELLED"]
    assert states[done.id] == "COMPLETED" and states[other.id] == "SCHEDULED"
    assert _cancel_trials in sweep.on_cancellation_hooks  # what Prefect calls when the sweep run is cancelled


@pytest.mark.slow
def test_a_trial_past_its_timeout_is_a_row_and_is_stopped(prefect_server, stand_in) -> None:
    import uuid

    from prefect.client.orchestration import get_client
    from prefect.states import Scheduled

    from tasks.trials import Trials

    with get_client(sync_client=True) as client:
        stuck = client.create_flow_run(stand_in, state=Scheduled())  # no worker ever picks it up
        params = SweepParams.model_validate({"grid": {"lr": [0.1]}, "trial_timeout_s": 0.01})
        trials = Trials(params, uuid.uuid4(), lambda run_params, tags: stuck.id)
        trials.launch()
        trials.settle(client, client.read_flow_run(stuck.id), timed_out=True)
        assert client.read_flow_run(stuck.id).state_type.value in ("CANCELLING", "CANCELLED")
    [row] = trials.rows
    assert row["state"] == "TIMED_OUT" and "cancelled" in row["error"] and row["val_accuracy"] is None
    assert trials.study.trials[0].state.name == "FAIL"
