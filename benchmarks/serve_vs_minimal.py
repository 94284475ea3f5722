"""`mnist serve` against the 30-line server a user would write instead (benchmarks/minimal_server.py), in one run on
loopback, with the same model.onnx:

    python benchmarks/serve_vs_minimal.py --onnx runs/<run>/model.onnx [--seconds 5] [--rounds 3] [--json out.json]

Both servers start on free ports (one uvicorn worker each, httptools and uvloop), are warmed, then `wrk` (one
thread, keep-alive) posts one 28x28 PNG as multipart to `POST /predict` for --seconds at each concurrency, the two
servers alternating and swapping order every round, so a burst of load from another job on a shared machine skews
both alike; the round with the most requests/s of each server and concurrency is printed. Then one 256-image UINT8
tensor on `mnist serve`'s v2 route (benchmarks/v2_binary.py's client), which the minimal server has no equal of.
The client shares the machine's cores with the servers. Every server is stopped by its PID at the end, also on an
error or Ctrl-C. Nothing fails on a figure; the numbers go to docs/performance.md.
"""

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import FrameType

import httpx
import numpy as np
from PIL import Image, ImageDraw

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from serve_process import serving_arguments, start_live, start_server, stop_server, wait_until  # noqa: E402
from v2_binary import BATCH, httpx_senders, machine, timed  # noqa: E402

from launch.server import free_port  # noqa: E402

BOUNDARY = "----serve-vs-minimal"
# wrk reads the multipart body from a file: a PNG's bytes are not valid text to paste into Lua source.
LUA = """local f = assert(io.open("{body}", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "multipart/form-data; boundary={boundary}"
"""
UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def digit_png() -> bytes:
    """A 28x28 '0' in MNIST form (white ink on black): what a client that already has a small image would send."""
    image = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(image).ellipse((8, 4, 20, 24), outline=255, width=3)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(png: bytes) -> bytes:
    return (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="digit.png"\r\n'
            f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{BOUNDARY}--\r\n".encode()  # fmt: skip


def to_ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * UNITS_MS[unit]


def run_wrk(url: str, script: Path, connections: int, seconds: float) -> dict[str, float]:
    """One wrk phase; requests/s, p50 / p99 ms from --latency, and the failures wrk counted (errors must be 0)."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script), f"{url}/predict"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
            "p50_ms": to_ms(latency["50"]), "p99_ms": to_ms(latency["99"]),
            "errors": errors + (int(non_2xx.group(1)) if non_2xx else 0)}  # fmt: skip


def start_minimal(onnx: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, str(PROJECT_ROOT / "benchmarks" / "minimal_server.py"), "--port", str(port)]
    return start_live(command, {**os.environ, "MINIMAL_ONNX": str(onnx)}, log, port, "/health")


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM (or SIGINT) unwinds through the `finally` that stops the servers, as Ctrl-C does


def main() -> int:
    parser = serving_arguments(__doc__, seconds=5.0)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of alternating phases")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="wrk connections")
    args = parser.parse_args()
    if args.onnx is None or not args.onnx.is_file():
        parser.error(f"no model.onnx: {args.onnx} (pass --onnx)")
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install -y wrk)")
    signal.signal(signal.SIGTERM, raise_interrupt)
    signal.signal(signal.SIGINT, raise_interrupt)  # also when started in the background, where SIGINT is ignored
    onnx = args.onnx.resolve()
    root = Path(tempfile.mkdtemp(prefix="serve-vs-minimal-"))
    png = digit_png()
    (root / "body.bin").write_bytes(multipart(png))
    script = root / "post.lua"
    script.write_text(LUA.format(body=root / "body.bin", boundary=BOUNDARY))
    processes: list[subprocess.Popen] = []
    try:
        ours, ours_url = start_server(root, root / "serve.log", "--model", str(onnx))
        processes.append(ours)
        minimal, minimal_url = start_minimal(onnx, root / "minimal.log")
        processes.append(minimal)
        servers = {"mnist serve": ours_url, "minimal": minimal_url}
        wait_until(lambda: httpx.get(f"{ours_url}/v2/health/ready").status_code == 200, timeout=30)
        # Both answer the PNG (the preparation differs: ours crops and centres by mass, the minimal one resizes).
        answers = {name: httpx.post(f"{url}/predict", files={"file": ("digit.png", png, "image/png")}).json()
                   for name, url in servers.items()}  # fmt: skip
        print(f"answers: mnist serve class {answers['mnist serve']['predictions'][0]['class']}, "
              f"minimal class {answers['minimal']['class']}")  # fmt: skip
        for url in servers.values():  # warm-up: connections, the model's first runs, Python's caches
            run_wrk(url, script, max(args.concurrency), 2)
        best: dict[tuple[str, int], dict[str, float]] = {}
        for round_ in range(args.rounds):
            order = list(servers.items()) if round_ % 2 == 0 else list(servers.items())[::-1]
            for connections in args.concurrency:
                for name, url in order:
                    result = run_wrk(url, script, connections, args.seconds)
                    print(f"round {round_ + 1} c={connections} {name}: {result['requests_per_s']:.0f} req/s, "
                          f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
                          f"errors {result['errors']:.0f}")  # fmt: skip
                    key = (name, connections)
                    if key not in best or result["requests_per_s"] > best[key]["requests_per_s"]:
                        best[key] = result
        images = np.random.default_rng(0).integers(0, 256, (BATCH, 28, 28), dtype=np.uint8)
        senders = httpx_senders(ours_url, images)
        v2 = {name: timed(send, args.seconds, 2000) for name, send in senders.items()}
    finally:
        # A second Ctrl-C or SIGTERM while stopping must not skip a server (stop_server kills after 15 s anyway).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for process in processes:
            stop_server(process)  # by PID: only the processes this script started
    print(f"\nmachine: {machine()}; load average {os.getloadavg()[0]:.2f}; model {onnx}")
    print(f"wrk -t1 -d{args.seconds:g}s, one 28x28 PNG multipart to POST /predict, best of {args.rounds} rounds")
    print(f"{'c':>3} {'server':<12} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}  ours/minimal")
    for connections in args.concurrency:
        ours_row, minimal_row = best[("mnist serve", connections)], best[("minimal", connections)]
        for name, row in (("mnist serve", ours_row), ("minimal", minimal_row)):
            ratio = f"{ours_row['requests_per_s'] / minimal_row['requests_per_s']:.0%}" if name == "minimal" else ""
            print(f"{connections:>3} {name:<12} {row['requests_per_s']:>8.0f} {row['p50_ms']:>7.2f} "
                  f"{row['p99_ms']:>7.2f} {row['errors']:>6.0f}  {ratio}")  # fmt: skip
    for name, row in v2.items():
        print(f"mnist serve v2, {BATCH} UINT8 images, {name}: {row['images_per_s']:.0f} images/s, "
              f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms")  # fmt: skip
    if args.json:
        figures = {f"{name} c={c}": row for (name, c), row in best.items()}
        args.json.write_text(json.dumps({"machine": machine(), "model": str(onnx), **figures, "v2": v2}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
