"""Imported by the command-line entry points before Prefect: Prefect's client telemetry is off unless the user
turned analytics on. On import, on a terminal, Prefect prints a first-run notice and queues a usage event, which
an offline machine then tries to send; the servers this project starts have analytics off as well
(deployments/server.py). PREFECT_SERVER_ANALYTICS_ENABLED=true, or DO_NOT_TRACK set by the user, wins."""

import os

if os.environ.get("PREFECT_SERVER_ANALYTICS_ENABLED", "").lower() not in ("1", "true"):
    os.environ.setdefault("DO_NOT_TRACK", "1")
