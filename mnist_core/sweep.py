"""A hyperparameter sweep's search: the parameters (validated before any trial starts), Optuna's ask-and-tell,
and the table of trials ranked by validation accuracy. Where trials run is the caller's business (flows/sweep.py
dispatches them to a Prefect work pool)."""

import itertools
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mnist_core.config import RunParams
from mnist_core.flags import describe_validation_error

if TYPE_CHECKING:  # imported where a study is made: `mnist sweep --help` and its usage errors stay quick
    import optuna

# What a trial may vary: what training computes. Where files go, the dataset and the promotion rule stay the base's.
NOT_SEARCHABLE = frozenset(
    {
        "dataset",
        "data_dir",
        "output_dir",
        "mirror",
        "extra_data",
        "run_name",
        "resume",
        "promote",
        "promotion_margin",
        "force_promote",
        "force_retrain",
        "promotion_metric",
        "preset",
        "device",
    }
)
FINAL_STATES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


class Range(BaseModel):
    """A sampled range: uniform, or log-uniform (`log`, e.g. a learning rate); integers with `integer`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    low: float
    high: float
    log: bool = False
    integer: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> "Range":
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (got {self.low})")
        return self


class SweepParams(BaseModel):
    """A sweep: the base run, the search space, how many trials, how many at once. Unknown fields are rejected,
    and every value the space can produce is checked against RunParams before any trial starts."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    base: RunParams = Field(default_factory=lambda: RunParams(epochs=1), description="What every trial starts from.")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="Field -> the values to try.")
    ranges: dict[str, Range] = Field(default_factory=dict, description="Field -> a range to sample.")
    trials: int = Field(8, ge=1, le=1000, description="How many trials (a grid alone: at most its size).")
    concurrency: int = Field(2, ge=1, le=64, description="How many trials run at once.")
    seed: int = Field(0, ge=0, lt=2**32, description="Seeds the sampler.")
    sampler: Literal["tpe", "random"] = Field("tpe", description="Optuna's sampler when there are ranges.")
    trial_timeout_s: float = Field(3600, gt=0, description="A trial still unfinished after this is given up.")
    promote_best: bool = Field(True, description="Offer the best trial to the champion/challenger rule.")

    @model_validator(mode="after")
    def _space_is_valid(self) -> "SweepParams":
        names = [*self.grid, *self.ranges]
        if not names:
            raise ValueError("the search space is empty: give grid values or ranges")
        for name in names:
            if name not in RunParams.model_fields:
                raise ValueError(f"{name!r} is not a run parameter (see RunParams)")
            if name in NOT_SEARCHABLE:
                raise ValueError(f"{name!r} cannot vary between trials (set it in base)")
        if duplicated := set(self.grid) & set(self.ranges):
            raise ValueError(f"{sorted(duplicated)} are in both grid and ranges")
        for name, values in self.grid.items():
            if not values:
                raise ValueError(f"grid[{name!r}] has no values")
            for value in values:
                check_trial(self.base, {name: value})
        for name, bounds in self.ranges.items():
            for value in (bounds.low, bounds.high):
                check_trial(self.base, {name: int(value) if bounds.integer else value})
        return self

    @property
    def grid_size(self) -> int:
        return math.prod(len(values) for values in self.grid.values())

    @property
    def planned_trials(self) -> int:
        return min(self.trials, self.grid_size) if not self.ranges else self.trials


def check_trial(base: RunParams, overrides: dict[str, Any]) -> RunParams:
    """The trial's run parameters, or a ValueError naming the field and the value."""
    try:
        return RunParams.model_validate({**base.model_dump(exclude={"preset"}), **overrides})
    except ValidationError as error:
        problem = error.errors()[0]
        field = ".".join(str(part) for part in problem["loc"]) or "parameters"
        raise ValueError(f"{overrides}: invalid {field}: {problem['msg']}") from None


def make_study(params: SweepParams) -> "optuna.Study":
    import optuna

    """An in-memory study maximizing validation accuracy: TPE or random over the ranges, the grid's values as
    categories. A grid alone is a grid: every point is enqueued, in order. (Optuna's GridSampler stops the study
    once the grid is done, which raises outside `study.optimize`, i.e. in ask-and-tell.)"""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if params.sampler == "random" or not params.ranges:
        sampler: optuna.samplers.BaseSampler = optuna.samplers.RandomSampler(seed=params.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=params.seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    if not params.ranges:
        names = list(params.grid)
        for point in itertools.product(*params.grid.values()):
            study.enqueue_trial(dict(zip(names, point, strict=True)))
    return study


def ask(study: "optuna.Study", params: SweepParams) -> tuple["optuna.Trial", dict[str, Any]]:
    """The next trial and its parameter values."""
    trial = study.ask()
    values: dict[str, Any] = {name: trial.suggest_categorical(name, choices) for name, choices in params.grid.items()}
    for name, bounds in params.ranges.items():
        if bounds.integer:
            values[name] = trial.suggest_int(name, int(bounds.low), int(bounds.high), log=bounds.log)
        else:
            values[name] = trial.suggest_float(name, bounds.low, bounds.high, log=bounds.log)
    return trial, values


def ranked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials by validation accuracy, best first; trials without one (failed, crashed) after, in trial order."""
    scored = sorted((row for row in rows if row.get("val_accuracy") is not None), key=lambda row: -row["val_accuracy"])
    unscored = [row for row in rows if row.get("val_accuracy") is None]
    return [{"rank": rank, **row} for rank, row in zip(itertools.count(1), [*scored, *unscored], strict=False)]


SWEEP_HELP = """A hyperparameter sweep. Optuna asks for each trial's parameters; each trial is a full run of the
`mnist` flow; the best trial by validation accuracy is offered to the champion/challenger rule.

Where trials run: when the Prefect API has the `mnist/trial` deployment (PREFECT_API_URL pointing at the stack or
any server with deployments/prefect.yaml applied), each trial is a run of it on the `mnist-pool` work pool,
`concurrency` at a time, on whichever workers are free (one per machine or GPU: `prefect worker start --pool
mnist-pool --limit 1`). Otherwise (e.g. Prefect's temporary server) trials run in this process, one after another.
Pass the sweep as JSON, `mnist sweep '{"grid": {"lr": [0.1, 0.3]}}'`, or a file holding it: `mnist sweep sweep.json`."""


def parse_sweep_arguments(argv: Sequence[str], prog: str = "mnist-sweep") -> SweepParams | int:
    """The sweep from the command line's one JSON argument, or the exit status after help (0) or a one-line-per-
    problem refusal (2): refused before any trial starts."""
    args = list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(SWEEP_HELP)
        print("Fields of the sweep JSON:", ", ".join(SweepParams.model_fields))
        return 0 if args else 2
    if len(args) > 1:
        example = '{"base": {"epochs": 1}, ...}'
        print(
            f"{prog}: error: expected one argument (the sweep as JSON), got {len(args)}: {args[1:]!r} left over; "
            f"put every setting in the JSON, e.g. '{example}'",
            file=sys.stderr,
        )
        return 2
    text, source = args[0], "the sweep"
    if not text.lstrip().startswith("{"):  # a file's name (found by a docs check: SWEEP_JSON read as JSON only)
        try:
            text, source = Path(text).read_text(encoding="utf-8"), text
        except (OSError, UnicodeDecodeError) as error:
            print(f"{prog}: error: {args[0]!r} is neither the sweep as JSON nor a file holding it ({error})",
                  file=sys.stderr)  # fmt: skip
            return 2
    try:
        return SweepParams.model_validate(json.loads(text))
    except json.JSONDecodeError as error:
        print(f"{prog}: error: {source} is not valid JSON ({error})", file=sys.stderr)
    except ValidationError as error:
        print(f"{prog}: error:\n{describe_validation_error(error, as_flags=False)}", file=sys.stderr)
    return 2
