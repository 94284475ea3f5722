"""Every setting a machine gives the pipeline (`MNIST_*`, and the few `AWS_*` / `PREFECT_API_URL` values that
another machine needs to reach the shared services) in one pydantic-settings model: type, default and meaning of
each, read from the environment and from a settings file.

The settings file is an env-file: one `NAME=value` a line (`#` comments, optional quotes, an optional `export `
prefix), the names being the environment variables' own, so a shell can also `set -a; . FILE`. It is named by
`mnist --settings FILE ...` or `MNIST_SETTINGS=FILE`. The environment wins over the file, the file over the
defaults; `mnist settings` prints each effective value and where it came from, secrets redacted.

Why an env-file and not TOML: the values are environment variables to Prefect, obstore and the flow processes a
worker spawns, and the `mnist` command exports the file's values into its environment (`export_file`) so that all
of them, and every child process, see one configuration without a second parser.

Adding a setting: one field below with `validation_alias` (its variable's name) and a `description`; then run
`python docs/gen_settings.py` (tests/test_docs.py fails while docs/settings.md is stale).
"""

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from mnist_core.errors import PipelineError
from mnist_core.redact import redact_url

SETTINGS_ENV = "MNIST_SETTINGS"
Source = Literal["default", "environment", "file"]


class SettingsError(PipelineError):
    """A settings file or value that cannot be used (missing file, unknown name, wrong type): one line."""


class Settings(BaseSettings):
    """What this machine is set to. Field order is the order of docs/settings.md and `mnist settings`."""

    # Names are the variables' own (no prefix games): grep finds a setting by the name a user typed.
    model_config = SettingsConfigDict(case_sensitive=True, env_ignore_empty=True, extra="ignore", frozen=True)

    # --- shared services: registry, artifact store, Prefect ---------------------------------------------------
    registry_url: SecretStr | None = Field(
        None,
        validation_alias="MNIST_REGISTRY_URL",
        description="Registry database URL (e.g. `postgresql+psycopg://user:pw@host:5432/db`); unset: "
        "`<output_dir>/registry.db` (SQLite). Shown with its password hidden.",
    )
    artifact_store: str | None = Field(
        None,
        validation_alias="MNIST_ARTIFACT_STORE",
        description="Where model files go so machines sharing no disk share a champion: `s3://bucket/prefix` or a "
        "folder; unset: the run folders are the only copy.",
    )
    aws_endpoint_url: str | None = Field(
        None,
        validation_alias="AWS_ENDPOINT_URL",
        description="The S3 endpoint of an S3-compatible store (SeaweedFS, MinIO); unset: AWS S3.",
    )
    aws_access_key_id: str | None = Field(
        None, validation_alias="AWS_ACCESS_KEY_ID", description="The S3 store's access key id."
    )
    aws_secret_access_key: SecretStr | None = Field(
        None, validation_alias="AWS_SECRET_ACCESS_KEY", description="The S3 store's secret key. Never shown."
    )
    aws_region: str | None = Field(
        None, validation_alias="AWS_REGION", description="The S3 store's region; unset: `us-east-1`."
    )
    aws_allow_http: bool = Field(
        False,
        validation_alias="AWS_ALLOW_HTTP",
        description="Allow a plain-HTTP S3 endpoint (a store on a trusted network without TLS).",
    )
    prefect_api_url: str | None = Field(
        None,
        validation_alias="PREFECT_API_URL",
        description="The Prefect server's API (`http://host:4200/api`); unset: a run starts a server of its own "
        "(or reports to this checkout's stack).",
    )
    # --- data --------------------------------------------------------------------------------------------------
    mirror: str | None = Field(
        None,
        validation_alias="MNIST_MIRROR",
        description="More MNIST mirrors, comma-separated (folders or URLs), tried after the official ones.",
    )
    fashion_mnist_mirror: str | None = Field(
        None,
        validation_alias="FASHION_MNIST_MIRROR",
        description="More Fashion-MNIST mirrors, comma-separated, tried after the official ones.",
    )
    # --- the terminal ------------------------------------------------------------------------------------------
    progress: bool = Field(
        True, validation_alias="MNIST_PROGRESS", description="Progress bars on a terminal (`0` turns them off)."
    )
    # --- mnist serve -------------------------------------------------------------------------------------------
    serve_token: SecretStr | None = Field(
        None,
        validation_alias="MNIST_SERVE_TOKEN",
        description="`mnist serve` requires `Authorization: Bearer TOKEN` on every route but health. Never shown.",
    )
    serve: bool = Field(
        True, validation_alias="MNIST_SERVE", description="`mnist stack up` starts the model server (`0`: not)."
    )
    serve_port: int = Field(
        8000, ge=1, le=65535, validation_alias="MNIST_SERVE_PORT", description="The stack's model server's port."
    )
    serve_output_dir: Path | None = Field(
        None,
        validation_alias="MNIST_SERVE_OUTPUT_DIR",
        description="The output folder whose champion the stack's model server follows; unset: `runs/`.",
    )
    feedback_retrain_after: int = Field(
        50,
        ge=1,
        validation_alias="MNIST_FEEDBACK_RETRAIN_AFTER",
        description="Corrections no run has trained on that make `mnist serve` announce `mnist.feedback.ready` "
        "(once), which triggers `mnist/train` with corrections (docs/monitoring.md).",
    )
    # --- the drift monitor (docs/monitoring.md) ----------------------------------------------------------------
    monitor_window: int = Field(
        500, ge=20, validation_alias="MNIST_MONITOR_WINDOW", description="Predictions compared with the reference."
    )
    monitor_min_predictions: int = Field(
        100,
        ge=20,
        validation_alias="MNIST_MONITOR_MIN_PREDICTIONS",
        description="Fewer predictions than this since the champion was served: no test (too few to say).",
    )
    monitor_classes_p: float = Field(
        0.01, gt=0, lt=1, validation_alias="MNIST_MONITOR_CLASSES_P", description="Alarm below this chi-square p."
    )
    monitor_not_a_digit_p: float = Field(
        0.01, gt=0, lt=1, validation_alias="MNIST_MONITOR_NOT_A_DIGIT_P", description="Alarm below this Fisher p."
    )
    monitor_confidence_p: float = Field(
        0.01, gt=0, lt=1, validation_alias="MNIST_MONITOR_CONFIDENCE_P", description="Alarm below this KS p."
    )
    monitor_score_p: float = Field(
        0.01, gt=0, lt=1, validation_alias="MNIST_MONITOR_SCORE_P", description="Alarm below this KS p (scores)."
    )
    monitor_history: int = Field(
        50, ge=1, validation_alias="MNIST_MONITOR_HISTORY", description="Earlier checks drawn in the monitor's plot."
    )
    # --- the local stack and workers ---------------------------------------------------------------------------
    stack_dir: Path | None = Field(
        None,
        validation_alias="MNIST_STACK_DIR",
        description="The stack's state folder (PIDs, logs, env, Prefect home); unset: `.stack/` in the checkout.",
    )
    stack_host: str = Field(
        "127.0.0.1",
        validation_alias="MNIST_STACK_HOST",
        description="The address the stack's Prefect server listens on (`0.0.0.0` lets other machines in).",
    )
    stack_port: int = Field(
        4200, ge=1, le=65535, validation_alias="MNIST_STACK_PORT", description="The stack's Prefect server's port."
    )
    worker_name: str | None = Field(
        None,
        validation_alias="MNIST_WORKER_NAME",
        description="This worker's name, in a sweep's table of trials; unset: the machine's host name.",
    )
    worker_limit: int | None = Field(
        None,
        ge=1,
        validation_alias="MNIST_WORKER_LIMIT",
        description="Flow runs at once on this machine's worker (1 per GPU to spread a sweep); unset: no limit.",
    )

    # --- helpers -----------------------------------------------------------------------------------------------

    def secret(self, field: str) -> str | None:
        """A secret's plain value, for the one place that uses it (never for printing)."""
        value = getattr(self, field)
        return value.get_secret_value() if isinstance(value, SecretStr) else value


def variable(field: str) -> str:
    """The environment variable (and settings-file name) of `field`."""
    alias = Settings.model_fields[field].validation_alias
    assert isinstance(alias, str)
    return alias


VARIABLES: dict[str, str] = {variable(name): name for name in Settings.model_fields}


def settings_file(environ: Mapping[str, str] | None = None) -> Path | None:
    """The file MNIST_SETTINGS names (the `mnist` command's `--settings` sets it), else None."""
    value = (os.environ if environ is None else environ).get(SETTINGS_ENV, "").strip()
    return Path(value).expanduser() if value else None


def read_file(path: Path) -> dict[str, str]:
    """A settings file's `NAME=value` pairs (python-dotenv's parser, the one pydantic-settings uses); a missing
    file or an unknown name is refused, naming it, so a typo never silently leaves a default in force."""
    from dotenv import dotenv_values

    if not path.is_file():
        raise SettingsError(f"settings file {path}: not found ({SETTINGS_ENV} or --settings names it)")
    try:
        values = dotenv_values(path, interpolate=False)
    except (OSError, UnicodeDecodeError) as error:
        raise SettingsError(f"settings file {path}: cannot be read ({error})") from error
    unknown = sorted(name for name in values if name not in VARIABLES)
    if unknown:
        raise SettingsError(
            f"settings file {path}: unknown setting {', '.join(unknown)} (known: docs/settings.md, `mnist settings`)"
        )
    return {name: value for name, value in values.items() if value not in (None, "")}


def load(path: Path | None = None, environ: Mapping[str, str] | None = None) -> tuple[Settings, dict[str, Source]]:
    """The effective settings (environment over file over defaults) and where each field's value came from."""
    environ = os.environ if environ is None else environ
    path = path or settings_file(environ)
    from_file = read_file(path) if path else {}
    from_env = {name: environ[name] for name in VARIABLES if environ.get(name, "") != ""}
    merged = {**from_file, **from_env}
    try:
        # Values given as init arguments by alias, so `environ` may be another mapping than os.environ (tests,
        # a worker checking a file before it joins) and pydantic-settings reads nothing behind our back.
        settings = Settings.model_validate(merged)
    except ValidationError as error:
        first = error.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "?"
        where = "the environment" if name in from_env else f"settings file {path}" if name in from_file else "default"
        raise SettingsError(f"setting {name}={merged.get(name)!r} (from {where}): {first['msg']}") from None
    sources: dict[str, Source] = {}
    for name, field in VARIABLES.items():
        # A value the file gave is "file" also after `export_file` put it into the environment (this process's or
        # a child's: a worker's flow run), so `mnist settings` says where it was set, not how it travelled.
        if name in from_env and from_env[name] != from_file.get(name):
            sources[field] = "environment"
        else:
            sources[field] = "file" if name in from_file else "default"
    return settings, sources


def current() -> Settings:
    """This process's settings now (read afresh each call: tests and `mnist` change the environment)."""
    return load()[0]


def export_file(path: Path) -> None:
    """Put the file's values into this process's environment where the environment has none, and name the file
    in MNIST_SETTINGS: Prefect (PREFECT_API_URL), obstore (AWS_*) and every process started from here (a worker's
    flow runs) then see the same settings. Checked whole first: a bad file changes nothing."""
    path = path.expanduser().resolve()
    values = read_file(path)
    load(path)  # every value valid, or one line and nothing exported
    for name, value in values.items():
        if os.environ.get(name, "") == "":
            os.environ[name] = value
    os.environ[SETTINGS_ENV] = str(path)


def shown(settings: Settings, field: str) -> str:
    """A value as printed: secrets redacted (a URL without its user and password), unset as `-`."""
    value: Any = getattr(settings, field)
    if value is None:
        return "-"
    if isinstance(value, SecretStr):
        plain = value.get_secret_value()
        return redact_url(plain) if "://" in plain else "**********"
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def write_file(path: Path, values: Mapping[str, str], header: str = "") -> None:
    """A settings file with mode 0600 from its first byte (it holds passwords), replaced whole."""
    unknown = sorted(set(values) - set(VARIABLES))
    if unknown:
        raise SettingsError(f"settings file {path}: unknown setting {', '.join(unknown)}")
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for name, value in values.items():
        quoted = value.replace("\\", "\\\\").replace("'", "\\'")
        lines.append(f"{name}='{quoted}'")
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.part")
    descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
        stream.write("\n".join(lines) + "\n")
    os.chmod(temp, 0o600)  # an existing temp file keeps its old mode through O_CREAT
    os.replace(temp, path)


def main(argv: Sequence[str] = ()) -> int:
    """`mnist settings [--json]`: every setting's effective value, where it came from, secrets redacted."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="mnist settings", description=main.__doc__)
    parser.add_argument("--json", action="store_true", help="one JSON object per setting")
    args = parser.parse_args(list(argv))
    try:
        settings, sources = load()
    except SettingsError as error:
        print(f"mnist settings: {error}", file=sys.stderr)
        return 1
    path = settings_file(os.environ)
    rows = [(variable(field), shown(settings, field), sources[field]) for field in Settings.model_fields]
    if args.json:
        for name, value, source in rows:
            print(json.dumps({"name": name, "value": value, "source": source}))
        return 0
    print(f"settings file: {path.resolve() if path else '- (none: --settings FILE or ' + SETTINGS_ENV + ')'}")
    width = max(len(name) for name, _, _ in rows)
    for name, value, source in rows:
        print(f"{name:<{width}}  {source:<11}  {value}")
    return 0
