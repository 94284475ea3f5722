"""The deployments' pull step: the flow run works in the checkout of the worker that runs it, wherever that
checkout is on its machine (deployments/prefect.yaml names `launch.pull.this_checkout`).

Prefect runs a deployment's pull steps in the flow-run process, which runs with the worker's Python: this module
is then imported from the worker's own installed checkout (`pip install -e .`), so PROJECT_ROOT is that checkout,
not the one `prefect deploy` ran in. Without a pull section, `prefect deploy` would record its own checkout's
absolute path, and a worker whose checkout is elsewhere would run in a folder that does not exist on its machine.
"""

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def this_checkout() -> dict[str, str]:
    """Work in this checkout (the flow's entrypoint, `flows/mnist.py`, and the default `runs/` and `data/` are
    relative to it); returns it as the step's output, as Prefect's own set_working_directory does."""
    os.chdir(PROJECT_ROOT)
    return {"directory": str(PROJECT_ROOT)}
