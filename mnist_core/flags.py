"""Command-line flags generated from `RunParams`, so flags and parameters cannot drift apart."""

import argparse
import types
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

ModelT = TypeVar("ModelT", bound=BaseModel)


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def build_parser(
    model: type[BaseModel], description: str, prog: str | None = None, positional: str | None = None
) -> argparse.ArgumentParser:
    """One flag per field (`positional` names a list field taken as the positional arguments instead). Values stay
    strings: the model validates and converts them, as it does for Python."""
    # No abbreviations: a misspelt flag such as --epoch must be refused, not silently read as --epochs.
    parser = argparse.ArgumentParser(
        prog=prog, description=description, argument_default=argparse.SUPPRESS, allow_abbrev=False
    )
    for name, info in model.model_fields.items():
        if name == positional:
            parser.add_argument(name, nargs="+", metavar=name.upper().removesuffix("S"), help=info.description)
            continue
        annotation = _unwrap_optional(info.annotation)
        origin = typing.get_origin(annotation)
        default = info.get_default(call_default_factory=True)
        # A description that names its own default (a setting's) is not followed by a second one.
        said = "(default:" in (info.description or "")
        help_text = info.description if said else f"{info.description} (default: {default})"
        kwargs: dict[str, Any] = {"dest": name, "help": help_text}
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is typing.Literal:
            kwargs["choices"] = [str(choice) for choice in typing.get_args(annotation)]
        elif origin is list and typing.get_args(annotation) == (str,):  # repeatable: --mirror A --mirror B
            kwargs["action"] = "append"
            kwargs["metavar"] = name.upper()
        elif origin is list:
            kwargs["nargs"] = "+"
            kwargs["metavar"] = "N"
        else:
            kwargs["metavar"] = name.upper()
        parser.add_argument(flag_name(name), **kwargs)
    return parser


def describe_validation_error(error: ValidationError, as_flags: bool = True) -> str:
    """One line per problem, naming the flag (or, not `as_flags`, the field's dotted path) and the value given."""
    lines = []
    for problem in error.errors():
        location = [str(part) for part in problem["loc"]]
        if not as_flags:
            where = ".".join(location) or "parameters"
        else:
            field = flag_name(location[0]) if location else "parameters"
            where = field + ("[" + "][".join(location[1:]) + "]" if len(location) > 1 else "")
        given = f" (got {problem['input']!r})" if problem["type"] != "missing" and "input" in problem else ""
        message = problem["msg"].removeprefix("Value error, ")  # pydantic's wording for our own validators' errors
        lines.append(f"invalid {where}: {message}{given}")
    return "\n".join(lines)


def parse_params(
    model: type[ModelT],
    argv: Sequence[str] | None,
    description: str,
    prog: str | None = None,
    positional: str | None = None,
) -> ModelT:
    """Parse and validate; a bad value exits with status 2 and a short message, not a traceback."""
    parser = build_parser(model, description, prog, positional)
    values = vars(parser.parse_args(argv))
    try:
        return model.model_validate(values)
    except ValidationError as error:
        problems = describe_validation_error(error)
        separator = "\n" if "\n" in problems else " "  # one problem: one line
        parser.exit(2, f"{parser.prog}: error:{separator}{problems}\n")
