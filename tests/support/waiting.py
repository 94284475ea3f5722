"""Waiting in tests: a condition polled (launch.server.poll, tenacity) until it holds, and a test failure naming what
did not happen when it does not in time."""

from collections.abc import Callable
from typing import TypeVar

import pytest
import tenacity

from launch.server import poll

T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout_s: float, failure: str | Callable[[], str], every_s: float = 0.1) -> T:
    """`check()` every `every_s` seconds until it returns something true, which is returned; after `timeout_s` the
    test fails with `failure` (a callable is called then, so a log shown is the latest). An exception from `check`
    (an assertion that a process still runs) ends the wait at once."""
    try:
        return poll(check, timeout_s, every_s)
    except tenacity.RetryError:
        pytest.fail(failure() if callable(failure) else failure)
