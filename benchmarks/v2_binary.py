"""The v2 route with a 256-image tensor, as JSON and as binary (the tensor data extension), side by side in one run
against one `mnist serve` process on loopback:

    python benchmarks/v2_binary.py --onnx runs/<run>/model.onnx [--seconds 3] [--max-requests 2000]

Each phase sends one request at a time for --seconds or --max-requests, whichever comes first, after a warm-up:
- httpx with the body built once (as benchmarks/serve_load.py does): the server's parse, inference and answer, and
  the client reading the answer (orjson for JSON, numpy.frombuffer for binary);
- NVIDIA's tritonclient (if installed) with `binary_data=False` and with its default binary input and outputs: what
  a Triton client sees, its own encoding of the request included.
The phases alternate JSON, binary, JSON, binary, and the better of each pair is printed, so a burst of load from
another job on a shared machine skews both alike. The client shares the machine's cores with the server. Nothing
fails on a figure; the numbers go to docs/serving.md ("Binary tensors").
"""

import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import orjson

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from serve_process import serving_arguments, start_server, stop_server  # noqa: E402

BATCH = 256
HEADER = "Inference-Header-Content-Length"


def timed(send: Callable[[], object], seconds: float, max_requests: int) -> dict[str, float]:
    """`send()` back to back; images/s and p50 / p99 per request."""
    for _ in range(3):  # warm-up: the connection, the model's first runs at this batch size
        send()
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline and len(latencies) < max_requests:
        started = time.perf_counter()
        send()
        latencies.append(time.perf_counter() - started)
    total = sum(latencies)
    return {"requests": len(latencies), "images_per_s": BATCH * len(latencies) / total,
            "p50_ms": 1000 * float(np.percentile(latencies, 50)),
            "p99_ms": 1000 * float(np.percentile(latencies, 99))}  # fmt: skip


def httpx_senders(url: str, images: np.ndarray) -> dict[str, Callable[[], object]]:
    client = httpx.Client(base_url=url, timeout=30)
    tensor = {"name": "images", "shape": list(images.shape), "datatype": "UINT8"}
    json_body = orjson.dumps({"inputs": [{**tensor, "data": images.ravel().tolist()}]})
    header = orjson.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": images.nbytes}}],
                           "parameters": {"binary_data_output": True}})  # fmt: skip
    binary_body = header + images.tobytes()

    def as_json() -> object:
        answer = client.post("/v2/models/mnist/infer", content=json_body, headers={"Content-Type": "application/json"})
        answer.raise_for_status()
        outputs = orjson.loads(answer.content)["outputs"]
        return np.asarray(outputs[0]["data"], np.float32)

    def as_binary() -> object:
        answer = client.post("/v2/models/mnist/infer", content=binary_body, headers={HEADER: str(len(header))})
        answer.raise_for_status()
        length = int(answer.headers[HEADER])
        return np.frombuffer(answer.content, "<f4", count=BATCH * 10, offset=length)

    return {"httpx JSON": as_json, "httpx binary": as_binary}


def triton_senders(url: str, images: np.ndarray) -> dict[str, Callable[[], object]]:
    try:
        import tritonclient.http as triton
    except ImportError:
        return {}
    client = triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=30)

    def send(binary: bool) -> object:
        tensor = triton.InferInput("images", list(images.shape), "UINT8")
        tensor.set_data_from_numpy(images, binary_data=binary)
        outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("probabilities", "class")]
        return client.infer("mnist", [tensor], outputs=outputs).as_numpy("probabilities")

    return {"tritonclient JSON": lambda: send(False), "tritonclient binary": lambda: send(True)}


def machine() -> str:
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]  # fmt: skip
        return f"{names[0]}, {len(names)} cores" if names else "unknown"
    except OSError:
        return "unknown"


def main() -> int:
    parser = serving_arguments(__doc__, seconds=3.0)
    parser.add_argument("--max-requests", type=int, default=2000, help="most requests in one phase")
    args = parser.parse_args()
    images = np.random.default_rng(0).integers(0, 256, (BATCH, 28, 28), dtype=np.uint8)
    root = Path(tempfile.mkdtemp(prefix="v2-binary-"))
    process, url = start_server(root, root / "serve.log", "--model", str(args.onnx.resolve()))
    try:
        while httpx.get(f"{url}/v2/health/ready").status_code != 200:
            time.sleep(0.02)
        senders = {**httpx_senders(url, images), **triton_senders(url, images)}
        # Both encodings answer the same probabilities before anything is timed.
        pairs = [("httpx JSON", "httpx binary"), ("tritonclient JSON", "tritonclient binary")]
        for plain, binary in pairs:
            if plain in senders:
                np.testing.assert_allclose(np.ravel(senders[plain]()), np.ravel(senders[binary]()), rtol=1e-6)
        figures: dict[str, dict[str, float]] = {}
        for _ in range(2):
            for name, send in senders.items():
                result = timed(send, args.seconds, args.max_requests)
                if name not in figures or result["images_per_s"] > figures[name]["images_per_s"]:
                    figures[name] = result
    finally:
        stop_server(process)
    print(f"machine: {machine()}; v2 tensor of {BATCH} images, one request at a time, best of 2 phases")
    print(f"{'client and encoding':<20} {'images/s':>9} {'requests/s':>10} {'p50 ms':>7} {'p99 ms':>7}")
    for name, row in figures.items():
        print(f"{name:<20} {row['images_per_s']:>9.0f} {row['images_per_s'] / BATCH:>10.1f} {row['p50_ms']:>7.1f} "
              f"{row['p99_ms']:>7.1f}")  # fmt: skip
    for plain, binary in pairs:
        if plain in figures:
            print(f"{binary} / {plain}: {figures[binary]['images_per_s'] / figures[plain]['images_per_s']:.1f}x")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), **figures}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
