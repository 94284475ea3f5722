"""`mnist serve` on a real uvicorn process on loopback (one for the whole module): every route, every bad input,
the token, readiness without a champion, following promotions under concurrent requests with no failure, and a
damaged new champion kept out."""

import base64
import contextlib
import io
import json
import re
import signal
import socket
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from launch.server import free_port
from mnist_core.layout import ONNX_FILE
from tests.support.photos import make_kind_photo
from tests.support.seaweedfs import distinct_free_ports
from tests.support.serving import (
    champion_json,
    digit_png,
    make_run,
    promote,
    rollback,
    start_server,
    stop_server,
    variant,
    wait_until,
)

pytestmark = pytest.mark.slow

TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY = 1_000_000


class Server:
    def __init__(self, process: subprocess.Popen, url: str, root: Path, log: Path, first_ready: httpx.Response) -> None:
        self.process, self.url, self.root, self.log, self.first_ready = process, url, root, log, first_ready
        self.client = httpx.Client(base_url=url, headers=AUTH, timeout=10)

    def served_run(self) -> str | None:
        body = self.client.get("/v2/health/ready").json()
        return body.get("model", {}).get("run_id")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module, started on an output root with no champion yet."""
    root = tmp_path_factory.mktemp("serve-runs")
    log = root.parent / "serve.log"
    flags = ["--poll-seconds", "0.2", "--max-body-bytes", str(MAX_BODY), "--max-images", "8", "--max-batch", "300",
             "--body-timeout-s", "1"]  # fmt: skip
    process, url = start_server(root, log, *flags, token=TOKEN)
    try:
        yield Server(process, url, root, log, httpx.get(f"{url}/v2/health/ready", timeout=5))
    finally:
        stop_server(process)


@pytest.fixture(scope="module")
def runs(server: Server, small_mnist_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Run A (promoted, served), run B (the same model, other bytes), run C (damaged after export), D (no file)."""
    other = variant(small_mnist_onnx, tmp_path_factory.mktemp("variant"), "run B")
    made = {
        "A": make_run(server.root, "run-a", small_mnist_onnx),
        "B": make_run(server.root, "run-b", other),
        "C": make_run(server.root, "run-c", small_mnist_onnx),
        "D": make_run(server.root, "run-d", small_mnist_onnx),
    }
    damaged = made["C"].run_dir / ONNX_FILE
    damaged.write_bytes(damaged.read_bytes()[:-100] + b"\0" * 100)  # after the card recorded its SHA-256
    (made["D"].run_dir / ONNX_FILE).unlink()
    promote(server.root, made["A"])
    wait_until(lambda: server.served_run() == "run-a", timeout=10)
    return made


@pytest.fixture(scope="module")
def digits(mnist_tensors: dict[str, torch.Tensor]) -> list[tuple[int, bytes]]:
    images, labels = mnist_tensors["test_images"][:20], mnist_tensors["test_labels"][:20]
    return [(int(label), digit_png(image, scale=3)) for image, label in zip(images, labels, strict=True)]


def png(width: int, height: int, pixels: bytes | None = None) -> bytes:
    """A grey PNG by hand: its header may claim any size (a decompression bomb costs nothing to make)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = pixels if pixels is not None else b"".join(b"\0" + b"\xff" * width for _ in range(min(height, 64)))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))  # fmt: skip


def v2_request(images: np.ndarray, **overrides: object) -> dict[str, object]:
    tensor = {"name": "images", "shape": list(images.shape), "datatype": "UINT8", "data": images.ravel().tolist()}
    return {"id": "req-1", "inputs": [{**tensor, **overrides}]}


def test_not_ready_without_a_champion_then_ready_when_one_appears(server: Server, runs: dict) -> None:
    assert server.first_ready.status_code == 503
    assert "no mnist champion" in server.first_ready.json()["reason"]
    ready = server.client.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}


def test_predict_multipart_answers_class_confidence_top3_and_the_model(server: Server, runs: dict, digits) -> None:
    files = [("file", (f"digit{index}.png", content, "image/png")) for index, (_, content) in enumerate(digits[:8])]
    answer = server.client.post("/predict", files=files)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"]["run_id"] == "run-a" and len(body["model"]["sha256"]) == 64
    predictions = body["predictions"]
    assert [row["input"] for row in predictions] == [f"digit{index}.png" for index in range(8)]
    assert sum(row["class"] == label for row, (label, _) in zip(predictions, digits, strict=False)) >= 7
    for row in predictions:
        assert 0 < row["confidence"] <= 1 and len(row["top3"]) == 3
        assert row["top3"][0]["class"] == row["class"] and row["top3"][0]["probability"] == row["confidence"]
        # its card has no not-a-digit rule: scored, never refused
        assert row["not_a_digit"] is False and isinstance(row["not_a_digit_score"], float)
    assert len({row["id"] for row in predictions}) == 8  # one id per image (tests/serving/test_feedback.py: the log)


def test_predict_json_takes_base64_and_data_urls(server: Server, runs: dict, digits) -> None:
    label, content = digits[0]
    encoded = base64.b64encode(content).decode()
    answer = server.client.post("/predict", json={"images": [encoded, "data:image/png;base64," + encoded]})
    assert answer.status_code == 200, answer.text
    assert [row["class"] for row in answer.json()["predictions"]] == [label, label]


def test_v2_metadata_and_infer(server: Server, runs: dict, mnist_tensors) -> None:
    metadata = server.client.get("/v2/models/mnist").json()
    assert metadata["name"] == "mnist" and metadata["versions"] == ["run-a"]
    assert metadata["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 28, 28]}]
    images, labels = mnist_tensors["test_images"][:256].numpy(), mnist_tensors["test_labels"][:256].numpy()
    answer = server.client.post("/v2/models/mnist/infer", json=v2_request(images))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_name"] == "mnist" and body["model_version"] == "run-a" and body["id"] == "req-1"
    outputs = {output["name"]: output for output in body["outputs"]}
    assert outputs["probabilities"]["shape"] == [256, 10] and outputs["class"]["shape"] == [256]
    assert outputs["not_a_digit_score"]["shape"] == [256] and len(set(body["parameters"]["prediction_ids"])) == 256
    assert [output["name"] for output in metadata["outputs"]] == ["probabilities", "class", "not_a_digit_score"]
    assert np.mean(np.array(outputs["class"]["data"]) == labels) > 0.85
    assert server.client.get("/v2/models/mnist/ready").status_code == 200
    # Zeros, a client's usual first request: "not a digit" (class 10), not a digit read into a blank.
    blank = server.client.post("/v2/models/mnist/infer", json=v2_request(np.zeros((2, 28, 28), np.uint8)))
    assert [output["data"] for output in blank.json()["outputs"] if output["name"] == "class"] == [[10, 10]]


def test_the_page_is_served_from_the_package(server: Server) -> None:
    page = httpx.get(f"{server.url}/?token={TOKEN}")
    assert page.status_code == 200 and "<canvas" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN


def test_the_token_is_required_everywhere_but_health(server: Server) -> None:
    for method, path in [("GET", "/"), ("POST", "/predict"), ("GET", "/metrics"), ("GET", "/v2/models/mnist"),
                         ("POST", "/v2/models/mnist/infer")]:  # fmt: skip
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            answer = httpx.request(method, f"{server.url}{path}", headers=headers)
            assert answer.status_code == 401, (path, answer.text)
            assert "token" in answer.json()["error"]
    assert httpx.get(f"{server.url}/v2/health/ready").status_code in (200, 503)


def _slow_client(server: Server) -> tuple[int, dict]:
    """Headers promising 100 bytes, then 10 bytes and silence."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: "
                     "application/json\r\nContent-Length: 100\r\n\r\n{\"images\":".encode())  # fmt: skip
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            data = sock.recv(4096)
            if not data:
                break
            reply += data
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _hang_up_mid_body(server: Server, route: str) -> None:
    """Headers promising 1,000 bytes, then 100 bytes, then the connection closed."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST {route} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: "
                     "application/json\r\nContent-Length: 1000\r\n\r\n".encode() + b" " * 100)  # fmt: skip


def _chunked(size: int) -> Iterator[bytes]:
    for _ in range(size // 65536 + 1):
        yield b"x" * 65536


BAD_REQUESTS = {
    "not an image": (dict(files={"file": ("a.png", b"hello, not a picture", "image/png")}), 422, "not an image"),
    "truncated PNG": ("truncated", 422, "truncated"),
    "decompression bomb": (dict(files={"file": ("bomb.png", png(30000, 30000), "image/png")}), 422, "bomb"),
    "over the pixel limit": (dict(files={"file": ("big.png", png(3000, 3000), "image/png")}), 422, "limit"),
    "too many pixels in all": (
        dict(files=[("file", (f"{i}.png", png(1500, 1000), "image/png")) for i in range(3)]),
        413,
        "in all",
    ),
    "1x1 image": (dict(files={"file": ("dot.png", png(1, 1), "image/png")}), 422, "too small"),
    "blank image": (dict(files={"file": ("blank.png", png(28, 28), "image/png")}), 422, "blank"),
    "empty file": (dict(files={"file": ("empty.png", b"", "image/png")}), 422, "empty"),
    "too many images": (dict(files=[("file", (f"{i}.png", b"x", "image/png")) for i in range(9)]), 413, "too many"),
    "no file in the form": (dict(files={"file": ("", b"")}, data={"a": "b"}), 400, "no image"),
    "malformed multipart": (
        dict(content=b"--x\r\nno end", headers={"Content-Type": "multipart/form-data; boundary=x"}),
        400,
        "malformed multipart",
    ),
    "multipart without boundary": (
        dict(content=b"abc", headers={"Content-Type": "multipart/form-data"}),
        400,
        "boundary",
    ),
    "wrong content type": (dict(content=b"abc", headers={"Content-Type": "text/plain"}), 415, "Content-Type"),
    "malformed JSON": (dict(content=b"{not json", headers={"Content-Type": "application/json"}), 400, "malformed"),
    "JSON without images": (dict(json={"pictures": []}), 422, "images"),
    "JSON not base64": (dict(json={"images": ["%%%"]}), 422, "base64"),
    "body over the limit": (
        dict(content=b"x" * (MAX_BODY + 1), headers={"Content-Type": "application/json"}),
        413,
        "limit of 1000000 bytes",
    ),  # fmt: skip
    "chunked body over the limit": (
        dict(content=_chunked(MAX_BODY), headers={"Content-Type": "application/json"}),
        413,
        "limit",
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_predict_request_gets_one_clear_4xx(server: Server, runs: dict, digits, case: str) -> None:
    request, status, fragment = BAD_REQUESTS[case]
    if request == "truncated":
        request = dict(files={"file": ("cut.png", digits[0][1][: len(digits[0][1]) // 2], "image/png")})
    if "content" in request and not isinstance(request["content"], bytes):
        request = {**request, "content": _chunked(MAX_BODY)}  # a fresh generator each run
    answer = server.client.post("/predict", **request)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert fragment in error and "Traceback" not in error


V2_BAD = {
    "wrong dtype": (dict(datatype="FP32"), "datatype"),
    "wrong shape": (dict(shape=[2, 28, 29]), "shape"),
    "shape and data disagree": (dict(shape=[3, 28, 28]), "integers"),
    "values over 255": (dict(data=[300] * 784 * 2), "0-255"),
    "floats": (dict(data=[0.5] * 784 * 2), "integers"),
    "ragged": (dict(data=[[1, 2], [3]]), "ragged"),
    "too many images": (dict(shape=[301, 28, 28]), "too many"),
}


@pytest.mark.parametrize("case", list(V2_BAD))
def test_a_bad_v2_tensor_gets_one_clear_4xx(server: Server, runs: dict, case: str) -> None:
    overrides, fragment = V2_BAD[case]
    answer = server.client.post("/v2/models/mnist/infer", json=v2_request(np.zeros((2, 28, 28), np.uint8), **overrides))
    assert 400 <= answer.status_code < 500, answer.text
    assert fragment in answer.json()["error"]


def test_other_bad_requests_and_a_slow_client(server: Server, runs: dict) -> None:
    assert server.client.post("/v2/models/fashion-mnist/infer", json={}).status_code == 404
    assert server.client.post("/v2/models/mnist/infer", content=b"[[[", headers={"Content-Type": "application/json"}
                              ).status_code == 400  # fmt: skip
    assert server.client.post("/v2/models/mnist/infer", json={"inputs": "x"}).status_code == 400
    assert server.client.post("/v2/models/mnist/infer", json={"inputs": []}).status_code == 400  # was a 500
    nowhere = server.client.get("/../../etc/passwd")
    assert nowhere.status_code == 404 and "error" in nowhere.json()
    assert server.client.delete("/predict").status_code == 405
    started = time.monotonic()
    status, body = _slow_client(server)
    assert status == 408 and "did not arrive" in body["error"]
    assert time.monotonic() - started < 5
    assert server.client.get("/v2/health/ready").status_code == 200  # still serving


def test_a_12_megapixel_phone_jpeg_is_read_under_the_4_megapixel_limit(
    server: Server, runs: dict, mnist_tensors
) -> None:
    """4032x3024 is 12.2 M pixels in its header, but the JPEG is decoded at 1/8 (504x378), or at 1/2 (2016x1512,
    3 M pixels) for a small digit: the limit applies to the larger. A PNG of that size is still refused."""
    digit, label = mnist_tensors["test_images"][0].numpy(), int(mnist_tensors["test_labels"][0])
    buffer = io.BytesIO()
    photo = make_kind_photo(digit, "red-ink", np.random.default_rng(3)).resize((4032, 3024), Image.BICUBIC)
    photo.save(buffer, "JPEG", quality=85)  # about 470 kB: under this server's 1 MB body
    answer = server.client.post("/predict", files={"file": ("IMG_0001.jpg", buffer.getvalue(), "image/jpeg")})
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"][0]["class"] == label
    refused = server.client.post("/predict", files={"file": ("wide.png", png(4032, 3024), "image/png")})
    assert refused.status_code == 422
    assert refused.json()["error"].startswith("wide.png: 4032x3024 px is over this server's limit of 4000000 pixels")
    # A JPEG a few pixels thin once made Pillow's reduced decode divide by zero: a 500 (found by a new user).
    strip = io.BytesIO()
    Image.new("L", (4000, 4), 255).save(strip, "JPEG")
    thin = server.client.post("/predict", files={"file": ("strip.jpg", strip.getvalue(), "image/jpeg")})
    assert thin.status_code == 422 and "4000x4 px is too small to hold a digit" in thin.json()["error"], thin.text


def test_a_client_hanging_up_mid_body_is_no_server_error(server: Server, runs: dict) -> None:
    """Found by a fault battery: each hang-up left a traceback in the log and a 500 in the metrics, which an error
    rate alert would count against the server."""
    before = server.log.read_text(encoding="utf-8", errors="replace").count("Traceback")
    for route in ("/predict", "/v2/models/mnist/infer"):
        _hang_up_mid_body(server, route)
    wait_until(lambda: 'route="/v2/models/{name}/infer",status="499"' in server.client.get("/metrics").text, 10)
    metrics = server.client.get("/metrics").text
    assert re.search(r'mnist_serve_requests_total\{route="/predict",status="499"\} \d', metrics)
    assert not re.search(r'status="500"\} [1-9]', metrics), "a hang-up counted as a server error"
    assert server.log.read_text(encoding="utf-8", errors="replace").count("Traceback") == before
    assert server.client.get("/v2/health/ready").status_code == 200


def test_metrics_count_requests_latency_classes_and_the_model(server: Server, runs: dict, digits) -> None:
    server.client.post("/predict", files={"file": ("d.png", digits[0][1], "image/png")})
    text = server.client.get("/metrics").text
    assert re.search(r'mnist_serve_requests_total\{route="/predict",status="200"\} \d', text)
    assert re.search(r'mnist_serve_requests_total\{route="/predict",status="422"\} \d', text)
    assert 'mnist_serve_request_seconds_bucket{le="0.01",route="/predict"}' in text
    assert f'mnist_serve_predictions_total{{class_name="{digits[0][0]}"}}' in text
    assert re.search(r'mnist_serve_model_info\{dataset="mnist",run_id="run-\w",sha256="[0-9a-f]{64}"\} 1.0', text)
    assert "mnist_serve_model_swaps_total" in text and "mnist_serve_model_swap_failures_total" in text
    assert "mnist_serve_predictions_logged_total" in text and "mnist_serve_predictions_dropped_total" in text
    # For monitoring (docs/monitoring.md): every answer's confidence; the not-a-digit rate is refused / total.
    assert 'mnist_serve_confidence_bucket{le="+Inf"}' in text and "mnist_serve_model_age_seconds" in text


def _load(server: Server, content: bytes, stop: threading.Event, results: list, workers: int = 8) -> list:
    def worker() -> None:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as client:
            while not stop.is_set():
                try:
                    answer = client.post("/predict", files={"file": ("d.png", content, "image/png")})
                    results.append((answer.status_code, answer.json()["model"]["run_id"] if answer.is_success else
                                    answer.text))  # fmt: skip
                except httpx.HTTPError as error:
                    results.append((0, repr(error)))

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    return threads


def test_a_promotion_under_concurrent_requests_swaps_with_no_failure(server: Server, runs: dict, digits) -> None:
    earlier = champion_json(server.root)
    stop, results = threading.Event(), []
    threads = _load(server, digits[0][1], stop, results)
    try:
        wait_until(lambda: len(results) > 20, timeout=10)
        promoted_at = time.monotonic()
        promote(server.root, runs["B"])
        wait_until(lambda: any(run == "run-b" for _, run in results[-8:]), timeout=5)
        swap_seconds = time.monotonic() - promoted_at
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    failures = [result for result in results if result[0] != 200]
    assert not failures, failures[:3]
    assert {run for _, run in results} == {"run-a", "run-b"} and swap_seconds < 5
    rollback(server.root, earlier)  # the earlier champion again
    wait_until(lambda: server.served_run() == "run-a", timeout=5)


@pytest.mark.parametrize("bad", ["C", "D"])
def test_a_damaged_or_missing_new_champion_is_kept_out(server: Server, runs: dict, digits, bad: str) -> None:
    served, earlier = server.served_run(), champion_json(server.root)
    failures_before = _metric(server, "mnist_serve_model_swap_failures_total")
    promote(server.root, runs[bad])
    wait_until(lambda: _metric(server, "mnist_serve_model_swap_failures_total") > failures_before, timeout=5)
    time.sleep(0.6)  # a few more polls: still one log line
    ready = server.client.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json()["model"]["run_id"] == served
    assert f"run-{bad.lower()}" in ready.json()["warning"]
    expected = "SHA-256" if bad == "C" else "no onnx model"
    assert expected in ready.json()["warning"]
    assert _metric(server, "mnist_serve_model_swap_failures_total") == failures_before + 1
    assert 'mnist_serve_model_problem_info{reason="' in server.client.get("/metrics").text
    log_lines = [line for line in server.log.read_text().splitlines() if f"run-{bad.lower()}" in line]
    assert len(log_lines) == 1, log_lines
    answer = server.client.post("/predict", files={"file": ("d.png", digits[0][1], "image/png")})
    assert answer.status_code == 200 and answer.json()["model"]["run_id"] == served
    rollback(server.root, earlier)  # a good champion again: swapped in, the warning gone
    wait_until(lambda: server.client.get("/v2/health/ready").json().get("warning") is None, timeout=5)


def _metric(server: Server, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", server.client.get("/metrics").text, re.MULTILINE)
    assert match, name
    return float(match.group(1))


def test_the_stack_starts_and_stops_the_model_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from launch.stack import SERVE_ROLE, Stack

    serve_port, stack_port = distinct_free_ports(2)
    monkeypatch.setenv("MNIST_SERVE_PORT", str(serve_port))
    monkeypatch.setenv("MNIST_SERVE_OUTPUT_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("MNIST_SERVE_TOKEN", raising=False)
    stack = Stack(tmp_path / "stack", "127.0.0.1", stack_port, "mnist-pool")
    try:
        assert "Model:" in stack._up_serve({})
        state = stack.read_state()
        assert stack.is_ours(state["serve_pid"], SERVE_ROLE)
        ready = httpx.get(f"{state['serve_url']}/v2/health/ready")
        assert ready.status_code == 503 and "no mnist champion" in ready.json()["reason"]
        stack.status()
        assert "model server: running" in capsys.readouterr().out
        with socket.socket() as busy:  # a busy port: the stack says so and goes on without a model server
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            monkeypatch.setenv("MNIST_SERVE_PORT", str(busy.getsockname()[1]))
            assert Stack(tmp_path / "other", "127.0.0.1", free_port(), "mnist-pool")._up_serve({}) == ""
            assert "NOT started" in capsys.readouterr().out
    finally:
        stack.down()
    assert not stack.is_ours(state["serve_pid"], SERVE_ROLE)
    assert "serve: stopped" in capsys.readouterr().out


def test_a_public_address_without_a_token_is_warned_about(
    monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path
) -> None:
    from mnist_core.serving import serve_command

    started: list[dict] = []
    monkeypatch.setattr(serve_command, "_serve", lambda app, options: started.append(options) or 0)
    monkeypatch.delenv("MNIST_SERVE_TOKEN", raising=False)
    assert serve_command.main(["--host", "0.0.0.0", "--port", "0", "--output-dir", "/nonexistent"]) == 0
    assert "without a token" in capsys.readouterr().err and started[0]["host"] == "0.0.0.0"
    monkeypatch.setenv("MNIST_SERVE_TOKEN", "secret")
    assert serve_command.main(["--host", "0.0.0.0", "--port", "0"]) == 0
    assert "without a token" not in capsys.readouterr().err
    # A model file that is not ONNX (found by a docs check: a .safetensors was served through torch, uncalibrated).
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"not read")
    with pytest.raises(SystemExit) as usage:
        serve_command.main(["--model", str(weights)])
    assert usage.value.code == 2 and "is not an .onnx file: mnist serve runs model.onnx" in capsys.readouterr().err
    # A bad setting is one line, as for every other command (found by a docs check: ~25 lines of traceback).
    monkeypatch.setenv("MNIST_SERVE_PORT", "abc")
    assert serve_command.main(["--port", "0"]) == 1
    assert capsys.readouterr().err == (
        "mnist serve: error: setting MNIST_SERVE_PORT='abc' (from the environment): Input should be a valid integer, "
        "unable to parse string as an integer\n"
    )


def test_ctrl_c_says_it_waits_for_requests_in_flight_and_a_second_drops_them_quietly(server: Server) -> None:
    """Found by a fault battery: the first Ctrl-C waited for a slow client silently (up to 10 s), a second printed
    ~80 lines of tracebacks. Last in this module: it stops the module's server."""
    process = server.process
    before = server.log.read_text(encoding="utf-8", errors="replace").count("Traceback")
    host, port = server.url.removeprefix("http://").split(":")
    stop = threading.Event()

    def trickle() -> None:  # a body arriving a byte at a time, each within --body-timeout-s: in flight throughout
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: "
                         "application/json\r\nContent-Length: 1000\r\n\r\n".encode())  # fmt: skip
            while not stop.wait(0.2):
                with contextlib.suppress(OSError):
                    sock.sendall(b" ")

    client = threading.Thread(target=trickle, daemon=True)
    client.start()
    try:
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        wait_until(lambda: "Ctrl-C again" in server.log.read_text(encoding="utf-8", errors="replace"), 10)
        assert process.poll() is None  # still waiting for the request
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        stop.set()
        client.join(timeout=5)
    log = server.log.read_text(encoding="utf-8", errors="replace")
    assert "mnist serve: stopping: waiting up to 10 s for 1 request(s) in flight (Ctrl-C again to stop now)" in log
    assert "mnist serve: stopping now: 1 request(s) in flight dropped" in log
    assert log.count("Traceback") == before and "CancelledError" not in log, log[-3000:]
