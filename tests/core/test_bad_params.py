"""Every bound of RunParams, unknown fields and wrong types: from Python, the CLI, the flow call and the schema
Prefect enforces on `prefect deployment run` (the live deployment check is in tests/e2e/test_deployment.py)."""

import math
import typing
from pathlib import Path
from typing import Any

import annotated_types as at
import pytest
from pydantic import ValidationError

from mnist_core.config import RunParams
from mnist_core.flags import flag_name, parse_params


def _just_past(bound: float, is_int: bool, direction: float) -> float:
    if is_int:
        return int(bound + direction)
    return math.nextafter(bound, direction * math.inf)


def _numeric_cases(label: str, constraints: list[Any], is_int: bool, wrap=lambda v: v) -> list[tuple[str, Any, Any]]:
    """(label:kind, accepted value at the bound, rejected value just past it) for ge/gt/le/lt constraints."""
    cases = []
    for constraint in constraints:
        for kind, inside, outside in (("ge", 0, -1), ("gt", 1, 0), ("le", 0, 1), ("lt", -1, 0)):
            bound = getattr(constraint, kind, None)
            if bound is None:
                continue
            ok = bound if inside == 0 else _just_past(bound, is_int, inside)
            bad = bound if outside == 0 else _just_past(bound, is_int, outside)
            cases.append((f"{label}:{kind}", wrap(ok), wrap(bad)))
    return cases


def _bound_cases() -> list[tuple[str, Any, Any]]:
    """Every bound declared on RunParams, read from the model so that a new bound is covered automatically."""
    cases: list[tuple[str, Any, Any]] = []
    for name, info in RunParams.model_fields.items():
        cases += _numeric_cases(name, info.metadata, info.annotation is int)
        if typing.get_origin(info.annotation) is list:
            item = typing.get_args(info.annotation)[0]
            item_info = typing.get_args(item)[1] if typing.get_args(item) else None
            item_constraints = item_info.metadata if item_info is not None else []
            cases += _numeric_cases(f"{name}[]", item_constraints, True, wrap=lambda v: [v])
            valid_item = next((c.ge for c in item_constraints if hasattr(c, "ge")), "x")
            for constraint in info.metadata:
                if isinstance(constraint, at.MinLen):
                    n = constraint.min_length
                    cases.append((f"{name}:min_length", [valid_item] * n, [valid_item] * (n - 1)))
                if isinstance(constraint, at.MaxLen):
                    n = constraint.max_length
                    cases.append((f"{name}:max_length", [valid_item] * n, [valid_item] * (n + 1)))
    return cases


BOUNDS = _bound_cases()
BOUND_IDS = [case[0] for case in BOUNDS]


def test_every_declared_bound_is_covered() -> None:
    """The cases come from the model itself; this pins that none was silently missed."""
    fields = {case[0].split(":")[0].rstrip("[]") for case in BOUNDS}
    assert fields == {
        "epochs", "batch_size", "lr", "momentum", "weight_decay", "label_smoothing", "hidden_sizes", "dropout",
        "seed", "val_size", "promotion_margin", "clip_grad_norm", "augment", "outlier_exposure", "outlier_batch",
        "outlier_images", "refusal_rate", "correction_holdout", "correction_tolerance", "extra_repeat",
    }  # fmt: skip
    assert len(BOUNDS) == 42


def _field(case_id: str) -> str:
    return case_id.split(":")[0].rstrip("[]")


def _cli_args(field: str, value: Any) -> list[str]:
    if isinstance(value, list):
        return [flag_name(field), *map(str, value)] if value else [flag_name(field)]
    # --flag=VALUE: argparse would read a value like -5e-324 as an option otherwise.
    return [f"{flag_name(field)}={value!r}" if isinstance(value, float) else f"{flag_name(field)}={value}"]


@pytest.mark.parametrize(("case", "ok", "bad"), BOUNDS, ids=BOUND_IDS)
def test_bound_from_python(case: str, ok: Any, bad: Any) -> None:
    field = _field(case)
    assert getattr(RunParams(**{field: ok}), field) == ok
    with pytest.raises(ValidationError) as caught:
        RunParams(**{field: bad})
    errors = caught.value.errors()
    assert len(errors) == 1 and errors[0]["loc"][0] == field
    assert field in str(caught.value)


@pytest.mark.parametrize(("case", "ok", "bad"), BOUNDS, ids=BOUND_IDS)
def test_bound_from_cli(case: str, ok: Any, bad: Any, capsys: pytest.CaptureFixture[str]) -> None:
    field = _field(case)
    assert getattr(parse_params(RunParams, _cli_args(field, ok), "test"), field) == ok
    with pytest.raises(SystemExit) as caught:
        parse_params(RunParams, _cli_args(field, bad), "test")
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert flag_name(field) in err and "Traceback" not in err
    if isinstance(bad, list):
        if bad:  # an empty list is refused by argparse itself ("expected at least one argument")
            assert str(bad[-1]) in err
    else:
        assert (repr(bad) if isinstance(bad, float) else str(bad)) in err


@pytest.fixture(scope="module")
def deployment_schema() -> dict[str, Any]:
    """The flow's parameter schema exactly as `prefect deploy` stores it for server-side enforcement."""
    from prefect.utilities.callables import parameter_schema

    from flows.mnist import mnist

    return parameter_schema(mnist).model_dump_for_openapi()


def _server_validate(parameters: dict[str, Any], schema: dict[str, Any]) -> None:
    """What the Prefect server runs on `POST /deployments/{id}/create_flow_run` when enforcement is on."""
    from prefect.utilities.schema_tools.validation import validate

    validate(parameters, schema, raise_on_error=True)


@pytest.mark.parametrize(("case", "ok", "bad"), BOUNDS, ids=BOUND_IDS)
def test_bound_from_deployment_schema(case: str, ok: Any, bad: Any, deployment_schema: dict[str, Any]) -> None:
    from prefect.utilities.schema_tools.validation import ValidationError as SchemaError

    field = _field(case)
    _server_validate({"params": {field: ok}}, deployment_schema)
    with pytest.raises(SchemaError, match=rf"params\.{field}"):
        _server_validate({"params": {field: bad}}, deployment_schema)


# --- unknown fields and wrong types ---------------------------------------------------------------------------------

WRONG = [
    ("epochs", "three", "Input should be a valid integer"),
    ("epochs", 2.5, "fractional part"),
    ("lr", "fast", "valid number"),
    ("nesterov", "maybe", "valid boolean"),
    ("hidden_sizes", ["wide"], "valid integer"),
    ("dataset", "cifar10", "'mnist' or 'fashion-mnist'"),
    ("optimizer", "rmsprop", "'sgd', 'adam' or 'adamw'"),
    ("device", "gpu", "should match pattern"),
    ("run_name", "../../etc", "should match pattern"),
    ("run_name", "a" * 65, "should match pattern"),
    ("preset", "fastest", "'fast98', 'seed', 'robust' or 'fashion90'"),
]


@pytest.mark.parametrize(("field", "value", "message"), WRONG, ids=[f"{f}={v!r}"[:30] for f, v, _ in WRONG])
def test_wrong_type_or_value_from_python(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        RunParams(**{field: value})
    assert caught.value.errors()[0]["loc"][0] == field


@pytest.mark.parametrize(("field", "value", "message"), WRONG, ids=[f"{f}={v!r}"[:30] for f, v, _ in WRONG])
def test_wrong_type_or_value_from_cli(field: str, value: Any, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = [flag_name(field), *map(str, value)] if isinstance(value, list) else [f"{flag_name(field)}={value}"]
    with pytest.raises(SystemExit) as caught:
        parse_params(RunParams, args, "test")
    assert caught.value.code == 2
    err = capsys.readouterr().err
    # Literal fields are refused by argparse's choices, the rest by the model; both name the flag and value.
    assert flag_name(field) in err and str(value if not isinstance(value, list) else value[0]) in err
    assert "Traceback" not in err


SCHEMA_WRONG = [(f, v) for f, v, _ in WRONG if f not in ("epochs",) or isinstance(v, str)] + [("bogus", 1)]


@pytest.mark.parametrize(("field", "value"), SCHEMA_WRONG, ids=[f"{f}={v!r}"[:30] for f, v in SCHEMA_WRONG])
def test_wrong_type_or_unknown_from_deployment_schema(field: str, value: Any, deployment_schema: dict) -> None:
    from prefect.utilities.schema_tools.validation import ValidationError as SchemaError

    with pytest.raises(SchemaError) as caught:
        _server_validate({"params": {field: value}}, deployment_schema)
    assert field in str(caught.value)


def test_unknown_field_from_python_and_cli(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted") as caught:
        RunParams(epochs=1, epoch=2)
    assert caught.value.errors()[0]["loc"] == ("epoch",)
    with pytest.raises(SystemExit) as exited:
        parse_params(RunParams, ["--epoch", "2"], "test")
    assert exited.value.code == 2
    assert "unrecognized arguments: --epoch 2" in capsys.readouterr().err


def test_path_fields_are_validated(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("", "   ", "runs\x00/x"):
        with pytest.raises(ValidationError, match="non-empty path without NUL"):
            RunParams(output_dir=bad)
    with pytest.raises(SystemExit):
        parse_params(RunParams, ["--data-dir="], "test")
    assert "invalid --data-dir: must be a non-empty path" in capsys.readouterr().err
    with pytest.raises(ValidationError, match="mirror '  ' must be a non-empty folder path or URL"):
        RunParams(mirror=["  "])
    assert RunParams(output_dir=Path("~/runs")).output_dir == Path.home() / "runs"


# --- the flow itself, called from Python with a dict ----------------------------------------------------------------

FLOW_CASES = [
    ({"epochs": 0}, "epochs"),
    ({"lr": 11}, "lr"),
    ({"batch_size": "many"}, "batch_size"),
    ({"epochs": 1, "bogus": True}, "bogus"),
    ({"run_name": "../escape"}, "run_name"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("params", "field"), FLOW_CASES, ids=[c[1] for c in FLOW_CASES])
def test_flow_called_with_bad_dict(params: dict[str, Any], field: str, prefect_server, tmp_path: Path) -> None:
    from prefect.exceptions import ParameterTypeError

    from flows.mnist import mnist

    output = tmp_path / "runs"
    with pytest.raises(ParameterTypeError, match=field):
        mnist(params={**params, "output_dir": str(output), "data_dir": str(tmp_path / "data")})
    assert not output.exists() and not (tmp_path / "data").exists(), "work started despite invalid parameters"
