"""What the tests share: the session's shared services (shared.py), PostgreSQL, SeaweedFS and Chromium for the tests
that need them, the serving helpers, records and synthetic data. Helpers only, no tests."""

from pathlib import Path

import psutil

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def running(pid: int) -> bool:
    """The process exists and is no zombie (a dead child not yet reaped has exited all the same)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
