"""Load on `mnist serve` over loopback, from an asyncio httpx client: what one server process answers.

    python benchmarks/serve_load.py --onnx runs/<run>/model.onnx [--seconds 3] [--json out.json]

Starts its own server (a temporary output root with two runs of the given model, the first one champion), then
measures, each phase bounded by --seconds and --max-requests:
- cold start: process start to `/v2/health/ready` answering 200;
- the ceiling: `GET /v2/health/live`, a bare FastAPI route returning a constant on the same server, at concurrency
  1, 8 and 64; beside it `POST /predict` with one 28x28 PNG per request at the same concurrencies;
- a v2 tensor request of 256 images (`POST /v2/models/mnist/infer`), one at a time;
- a swap under load: the second run promoted while /predict runs at concurrency 8: failed requests, and seconds
  until the new model answers;
- the server's peak RSS (VmHWM) and whether it mapped any torch library.
The client shares the machine's cores with the server: on a small machine it is part of what is measured.
Nothing fails on a figure; the numbers go to docs/serving.md.
"""

import argparse
import asyncio
import io
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from made_up_runs import make_run, promote, variant  # noqa: E402
from serve_process import serving_arguments, start_server, stop_server  # noqa: E402


def one_png() -> bytes:
    """A 28x28 digit-like stroke, dark on white, as a PNG."""
    image = np.full((28, 28), 255, np.uint8)
    image[5:23, 13:16] = 0
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def load(url: str, make_request, concurrency: int, seconds: float, max_requests: int) -> dict:  # noqa: ANN001
    """`concurrency` clients sending `make_request(client)` back to back for `seconds` (or `max_requests`)."""
    latencies: list[float] = []
    failures = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal failures
            while time.perf_counter() < deadline and len(latencies) + failures < max_requests:
                started = time.perf_counter()
                try:
                    answer = await make_request(client)
                    ok = answer.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    failures += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "failures": failures,
        "rps": len(latencies) / elapsed,
        "p50_ms": 1000 * percentile(latencies, 50),
        "p99_ms": 1000 * percentile(latencies, 99),
    }


async def swap_under_load(url: str, root: Path, new_run, png: bytes, seconds: float) -> dict:  # noqa: ANN001
    results: list[tuple[float, int, str | None]] = []
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def worker() -> None:
            while not stop.is_set():
                try:
                    answer = await client.post("/predict", files={"file": ("d.png", png, "image/png")})
                    run = answer.json()["model"]["run_id"] if answer.status_code == 200 else None
                    results.append((time.perf_counter(), answer.status_code, run))
                except httpx.HTTPError:
                    results.append((time.perf_counter(), 0, None))

        tasks = [asyncio.create_task(worker()) for _ in range(8)]
        await asyncio.sleep(1.0)
        promoted_at = time.perf_counter()
        await asyncio.to_thread(promote, root, new_run)
        deadline = promoted_at + max(seconds, 6.0)
        while time.perf_counter() < deadline and not any(run == new_run.run_id for _, _, run in results[-8:]):
            await asyncio.sleep(0.02)
        first_new = next((t for t, _, run in results if run == new_run.run_id and t > promoted_at), None)
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*tasks)
    return {
        "requests": len(results),
        "failed": sum(status != 200 for _, status, _ in results),
        "new_model_after_s": None if first_new is None else first_new - promoted_at,
    }


def server_memory(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {"peak_rss_mb": int(fields["VmHWM"].split()[0]) / 1024, "torch_loaded": "torch" in maps}


def machine() -> str:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))  # fmt: skip
    except (OSError, StopIteration):
        cpu = platform.processor()
    import os

    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


async def measure(url: str, root: Path, new_run, args: argparse.Namespace) -> dict:  # noqa: ANN001
    png = one_png()
    tensor = {"inputs": [{"name": "images", "shape": [256, 28, 28], "datatype": "UINT8",
                          "data": np.random.default_rng(0).integers(0, 256, 256 * 784).tolist()}]}  # fmt: skip
    body = json.dumps(tensor).encode()

    def ceiling(client: httpx.AsyncClient):  # noqa: ANN202
        return client.get("/v2/health/live")

    def single(client: httpx.AsyncClient):  # noqa: ANN202
        return client.post("/predict", files={"file": ("d.png", png, "image/png")})

    def v2(client: httpx.AsyncClient):  # noqa: ANN202
        return client.post("/v2/models/mnist/infer", content=body, headers={"Content-Type": "application/json"})

    await load(url, single, 4, 0.5, 200)  # warm-up: connections, the model's first runs
    rows = []
    for concurrency in (1, 8, 64):
        bare = await load(url, ceiling, concurrency, args.seconds, args.max_requests)
        predict = await load(url, single, concurrency, args.seconds, args.max_requests)
        rows.append({"concurrency": concurrency, "ceiling": bare, "predict": predict,
                     "share_of_ceiling": predict["rps"] / bare["rps"]})  # fmt: skip
    batch = await load(url, v2, 1, args.seconds, args.max_requests)
    swap = await swap_under_load(url, root, new_run, png, args.seconds)
    return {"single_image": rows, "v2_256_images": batch, "swap_under_load": swap}


def main() -> int:
    parser = serving_arguments(__doc__, seconds=3.0)
    parser.add_argument("--max-requests", type=int, default=20_000, help="most requests in one phase")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="serve-load-"))
    first = make_run(root, "bench-a", args.onnx)
    second = make_run(root, "bench-b", variant(args.onnx, root / "variant", "bench-b"))
    promote(root, first)
    started = time.perf_counter()
    process, url = start_server(root, root / "serve.log", "--poll-seconds", "1")
    while httpx.get(f"{url}/v2/health/ready").status_code != 200:
        time.sleep(0.02)
    cold_start = time.perf_counter() - started
    try:
        figures = asyncio.run(measure(url, root, second, args))
        figures.update(server_memory(process.pid))
    finally:
        stop_server(process)
    figures.update(cold_start_to_ready_s=cold_start, machine=machine())
    print(f"machine: {figures['machine']}")
    print(f"cold start to ready: {cold_start:.2f} s; peak RSS {figures['peak_rss_mb']:.0f} MB; "
          f"torch loaded: {figures['torch_loaded']}")  # fmt: skip
    print(f"{'conc':>4} {'ceiling rps':>11} {'p50 ms':>7} {'p99 ms':>7} | {'predict rps':>11} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'share':>6} {'fail':>4}")  # fmt: skip
    for row in figures["single_image"]:
        bare, predict = row["ceiling"], row["predict"]
        print(f"{row['concurrency']:>4} {bare['rps']:>11.0f} {bare['p50_ms']:>7.2f} {bare['p99_ms']:>7.2f} | "
              f"{predict['rps']:>11.0f} {predict['p50_ms']:>7.2f} {predict['p99_ms']:>7.2f} "
              f"{row['share_of_ceiling']:>6.0%} {predict['failures']:>4}")  # fmt: skip
    batch = figures["v2_256_images"]
    print(f"v2 256 images: {batch['rps']:.1f} requests/s ({256 * batch['rps']:.0f} images/s), p50 "
          f"{batch['p50_ms']:.1f} ms, p99 {batch['p99_ms']:.1f} ms")  # fmt: skip
    swap = figures["swap_under_load"]
    print(f"swap under load (concurrency 8): {swap['failed']} failed of {swap['requests']}, new model answering "
          f"after {swap['new_model_after_s']:.2f} s")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
