"""What the tests share: the session's shared services (shared.py), PostgreSQL, SeaweedFS and Chromium for the tests
that need them, the serving helpers, records and synthetic data. Helpers only, no tests."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
