"""When a task is worth running again: Prefect asks `retry_condition_fn` after each failed attempt."""

from typing import Any

from prefect import State

from mnist_core.errors import StorageError


def storage_fault(task: Any, task_run: Any, state: State) -> bool:
    """The database or the store not answering may pass; anything else (a damaged log, a bad parameter) would fail
    the same way again."""
    return isinstance(state.result(raise_on_failure=False), StorageError)
