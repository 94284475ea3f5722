"""`mnist worker --settings FILE`: this machine joins the work pool, from a checkout at any path.

First it checks what the flow runs it takes will need, one line for each that fails, so a worker that cannot
work never takes a run: the Prefect server answers, the registry database takes this machine's login, the
artifact store takes a write. Then it becomes `prefect worker start --pool mnist-pool --type process` (the same
process: a SIGTERM or Ctrl-C reaches Prefect directly), with the settings in its environment, which every flow run
it starts inherits. The deployments' pull step (launch/pull.py) runs each flow in this worker's own checkout.
"""

import argparse
import os
import socket
import sys

from launch.server import prefect_command, server_healthy
from launch.stack import DEFAULT_POOL, PROJECT_ROOT
from mnist_core.errors import PipelineError
from mnist_core.redact import redact_url
from mnist_core.settings import SettingsError, load, variable


def checks() -> list[str]:
    """What fails, one line each (an empty list: this machine can work)."""
    from mnist_core.registry.artifacts import configured_store
    from mnist_core.registry.store import check_registry

    try:
        settings, _ = load()
    except SettingsError as error:
        return [str(error)]
    problems = []
    url = settings.prefect_api_url
    if not url:
        problems.append(f"Prefect server: {variable('prefect_api_url')} is not set (--settings FILE names it)")
    elif not _healthy(url):
        problems.append(f"Prefect server {url}: does not answer /api/health")
    if not settings.registry_url:
        problems.append(
            f"registry database: {variable('registry_url')} is not set: each machine would keep a registry "
            "of its own (a SQLite file), so runs on different machines would not share one champion"
        )
    else:
        try:
            check_registry(PROJECT_ROOT / "runs", "mnist")
        except (PipelineError, OSError) as error:
            problems.append(f"registry database: {str(error).splitlines()[0]}")
    try:
        store = configured_store()
        if store is None:
            problems.append(f"artifact store: {variable('artifact_store')} is not set: other machines could not "
                            "fetch the models this one trains")  # fmt: skip
        else:
            store.probe()
    except PipelineError as error:
        problems.append(str(error).splitlines()[0])
    return [redact_url(problem) if "://" in problem else problem for problem in problems]


def _healthy(url: str) -> bool:
    try:
        return server_healthy(url, timeout_s=5.0)
    except Exception:  # noqa: BLE001 - any failure to answer is "does not answer"
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mnist worker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--name", help="the worker's name (default: MNIST_WORKER_NAME, else the host name)")
    parser.add_argument("--limit", type=int, help="flow runs at once (default: MNIST_WORKER_LIMIT, else no limit)")
    parser.add_argument("--pool", default=DEFAULT_POOL)
    parser.add_argument("--check", action="store_true", help="only check the services, then exit")
    args = parser.parse_args(argv)
    problems = checks()
    for problem in problems:
        print(f"mnist worker: {problem}", file=sys.stderr)
    if problems:
        print("mnist worker: not joining the pool", file=sys.stderr)
        return 1
    settings, _ = load()
    name = args.name or settings.worker_name or socket.gethostname()
    limit = args.limit or settings.worker_limit
    print(f"mnist worker: {settings.prefect_api_url}, registry and store answer; joining pool {args.pool} as "
          f"{name} from {PROJECT_ROOT}", flush=True)  # fmt: skip
    if args.check:
        return 0
    # Its flow runs inherit this: a sweep's table names the worker; Prefect and the S3 client read the rest.
    os.environ["MNIST_WORKER_NAME"] = name
    os.environ.setdefault("PREFECT_WORKER_QUERY_SECONDS", "1")  # manual runs picked up in ~1 s, not 10
    command = [*prefect_command(), "worker", "start", "--pool", args.pool, "--type", "process", "--name", name]
    if limit:
        command += ["--limit", str(limit)]
    os.chdir(PROJECT_ROOT)
    os.execv(command[0], command)  # noqa: S606 - becomes the worker: signals reach Prefect directly


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
