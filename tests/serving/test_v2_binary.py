"""The v2 route's binary tensor extension, as NVIDIA's real `tritonclient` speaks it (binary input and output, a
token in a header), against the app on a real uvicorn server on loopback, answering what the JSON path answers;
and each malformed binary body refused with one clear 400 (raw HTTP by httpx)."""

import gzip
import json
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as triton
import uvicorn

from launch.server import free_port
from mnist_core.serving.app import create_app
from mnist_core.serving.settings import ServeSettings

pytestmark = pytest.mark.slow  # starts a server

TOKEN = "binary-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BATCH = 300
HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def url(small_mnist_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app of `mnist serve` with the session's small model, on uvicorn in a thread of this process (no second
    interpreter to start: the module takes a few seconds, not ten)."""
    settings = ServeSettings(model=str(small_mnist_onnx), output_dir=tmp_path_factory.mktemp("binary-runs"),
                             max_batch=MAX_BATCH, max_body_bytes=1_000_000, body_timeout_s=2)  # fmt: skip
    port = free_port()
    config = uvicorn.Config(create_app(settings, token=TOKEN), host="127.0.0.1", port=port, http="httptools",
                            log_level="warning", access_log=False)  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    address = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{address}/v2/health/ready", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not become ready"
        time.sleep(0.05)
    try:
        yield address
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture(scope="module")
def images(mnist_tensors: dict[str, torch.Tensor]) -> np.ndarray:
    return mnist_tensors["test_images"][:64].numpy().astype(np.uint8)


@pytest.fixture(scope="module")
def json_answer(url: str, images: np.ndarray) -> dict[str, np.ndarray]:
    """What the JSON path answers for `images`: the reference for the binary one."""
    tensor = {"name": "images", "shape": list(images.shape), "datatype": "UINT8", "data": images.ravel().tolist()}
    answer = httpx.post(f"{url}/v2/models/mnist/infer", json={"inputs": [tensor]}, headers=AUTH, timeout=10)
    assert answer.status_code == 200 and HEADER not in answer.headers, answer.text
    outputs = {output["name"]: output for output in answer.json()["outputs"]}
    return {
        "probabilities": np.array(outputs["probabilities"]["data"], np.float32).reshape(
            outputs["probabilities"]["shape"]
        ),
        "class": np.array(outputs["class"]["data"], np.int64),
    }


def binary_body(header: dict, payload: bytes) -> tuple[bytes, dict[str, str]]:
    text = json.dumps(header).encode()
    return text + payload, {HEADER: str(len(text)), **AUTH}


def test_tritonclient_binary_in_and_out_answers_as_the_json_path(url: str, images, json_answer) -> None:
    client = triton.InferenceServerClient(url.removeprefix("http://"), connection_timeout=10, network_timeout=10)
    try:
        tensor = triton.InferInput("images", list(images.shape), "UINT8")
        tensor.set_data_from_numpy(images)  # binary_data=True: the client's default
        outputs = [triton.InferRequestedOutput("probabilities"), triton.InferRequestedOutput("class")]  # binary
        # A copy each time: tritonclient writes its Inference-Header-Content-Length (an int) into the dict it is given.
        result = client.infer("mnist", [tensor], outputs=outputs, request_id="bin-1", headers=dict(AUTH))
        response = result.get_response()
        assert response["id"] == "bin-1" and response["model_name"] == "mnist"
        assert set(response["parameters"]) == {"sha256", "run_id", "prediction_ids"}
        assert len(set(response["parameters"]["prediction_ids"])) == len(images)  # one id per image, each its own
        assert all("data" not in output and output["parameters"]["binary_data_size"] > 0
                   for output in response["outputs"])  # fmt: skip
        assert np.array_equal(result.as_numpy("class"), json_answer["class"])
        np.testing.assert_array_equal(result.as_numpy("probabilities"), json_answer["probabilities"])
        # No outputs named: tritonclient asks for all of them in binary, at the request's level.
        everything = client.infer("mnist", [tensor], headers=dict(AUTH))
        assert np.array_equal(everything.as_numpy("class"), json_answer["class"])
        scores = everything.as_numpy("not_a_digit_score")  # the extra output, binary like the others
        assert scores.dtype == np.float32 and scores.shape == (len(images),) and np.isfinite(scores).all()
        # Binary input, JSON output: the answer is plain JSON.
        as_json = client.infer("mnist", [tensor], outputs=[triton.InferRequestedOutput("class", binary_data=False)],
                               headers=dict(AUTH))  # fmt: skip
        assert [output["name"] for output in as_json.get_response()["outputs"]] == ["class"]
        assert np.array_equal(as_json.as_numpy("class"), json_answer["class"])
        # Compressed both ways, as tritonclient offers (it was "400 malformed JSON"): the same answers.
        for algorithm in ("gzip", "deflate"):
            packed = client.infer(
                "mnist", [tensor], outputs=outputs, headers=dict(AUTH),
                request_compression_algorithm=algorithm, response_compression_algorithm=algorithm,
            )  # fmt: skip
            assert np.array_equal(packed.as_numpy("class"), json_answer["class"]), algorithm
            np.testing.assert_array_equal(packed.as_numpy("probabilities"), json_answer["probabilities"])
    finally:
        client.close()


def test_compressed_bodies_are_read_within_the_limits(url: str, images, json_answer) -> None:
    tensor = {"name": "images", "shape": list(images.shape), "datatype": "UINT8", "data": images.ravel().tolist()}
    text = json.dumps({"inputs": [tensor]}).encode()  # 64 images: an answer worth compressing (over 1 KB)
    route = f"{url}/v2/models/mnist/infer"
    sent = httpx.post(route, content=gzip.compress(text), timeout=10,
                      headers={"Content-Encoding": "gzip", "Accept-Encoding": "gzip;q=0, deflate", **AUTH})  # fmt: skip
    assert sent.status_code == 200, sent.text
    assert sent.headers["content-encoding"] == "deflate"  # gzip refused by its weight 0; httpx decompresses
    classes = [output["data"] for output in sent.json()["outputs"] if output["name"] == "class"]
    assert classes == [json_answer["class"].tolist()]
    bomb = gzip.compress(b" " * 2_000_000)  # 2 MB of spaces in ~2 KB: over the 1 MB limit once decompressed
    cases = {
        "br": (text, 415, "Content-Encoding br"),
        "gzip": (text, 400, "is not gzip data"),  # said gzip, sent plain
        "deflate": (zlib.compress(text)[:-9], 400, "ends early"),
        "x-gzip": (bomb, 413, "decompressed"),
        "GZIP": (gzip.compress(text) + gzip.compress(b" "), 400, "data after the end"),  # two members
    }
    for encoding, (body, status, fragment) in cases.items():
        answer = httpx.post(route, content=body, headers={"Content-Encoding": encoding, **AUTH}, timeout=10)
        error = answer.json()["error"]
        assert answer.status_code == status and fragment in error and "\n" not in error, (encoding, error)


def test_raw_binary_request_with_one_binary_output(url: str, images, json_answer) -> None:
    outputs = [{"name": "probabilities", "parameters": {"binary_data_output": True}}, {"name": "class"}]
    header = {**_tensor(), "outputs": outputs}
    body, headers = binary_body(header, images[:2].tobytes())
    answer = httpx.post(f"{url}/v2/models/mnist/infer", content=body, headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    length = int(answer.headers[HEADER])
    described = json.loads(answer.content[:length])
    probabilities, kind = described["outputs"]
    assert probabilities["parameters"] == {"binary_data_size": 2 * 10 * 4} and "data" not in probabilities
    assert kind["data"] == json_answer["class"][:2].tolist()  # not asked as binary: in the JSON
    raw = np.frombuffer(answer.content[length:], "<f4").reshape(2, 10)
    np.testing.assert_array_equal(raw, json_answer["probabilities"][:2])


def _tensor(count: int = 2, size: object = 2 * 784, **extra: object) -> dict:
    return {"inputs": [{"name": "images", "shape": [count, 28, 28], "datatype": "UINT8",
                        "parameters": {"binary_data_size": size}, **extra}]}  # fmt: skip


GOOD = json.dumps(_tensor()).encode()
PIXELS = bytes(2 * 784)
WHOLE = len(GOOD) + len(PIXELS)
# (JSON header, the bytes after it, the HTTP headers: None for the header's true length, the error's words)
BAD_BINARY = {
    "header length missing": (GOOD, PIXELS, {}, "need Inference-Header-Content-Length"),
    "header length not a number": (GOOD, PIXELS, {HEADER: "12a"}, "not a number"),
    "header length negative": (GOOD, PIXELS, {HEADER: "-5"}, "not a number"),
    "header length over the body": (GOOD, PIXELS, {HEADER: str(WHOLE + 1)}, "holds only"),
    "header length cuts the JSON": (GOOD, PIXELS, {HEADER: str(len(GOOD) - 3)}, "JSON header"),
    "bad JSON header": (b"{nope", PIXELS, None, "JSON header"),
    "size not the shape's": (json.dumps(_tensor(size=784)).encode(), bytes(784), None, "is 1568 bytes"),
    "size not a number": (json.dumps(_tensor(size="1568")).encode(), PIXELS, None, "not a number of bytes"),
    "sizes short of the body": (GOOD, PIXELS + b"extra", None, "add up to 1568"),
    "sizes over the body": (GOOD, PIXELS[:-1], None, "add up to 1568"),
    "data and binary": (json.dumps(_tensor(data=[0] * 1568)).encode(), PIXELS, None, "both"),
    "wrong dtype": (json.dumps(_tensor(datatype="FP32")).encode(), PIXELS, None, "datatype"),
    "unknown output": (json.dumps({**_tensor(), "outputs": [{"name": "logits"}]}).encode(), PIXELS, None, "logits"),
    "no inputs": (b'{"inputs": []}', b"", None, "expected"),  # found by a fault battery: it answered 500
}


@pytest.mark.parametrize("case", list(BAD_BINARY))
def test_a_bad_binary_body_gets_one_clear_400(url: str, case: str) -> None:
    text, payload, headers, fragment = BAD_BINARY[case]
    headers = {HEADER: str(len(text))} if headers is None else headers
    answer = httpx.post(f"{url}/v2/models/mnist/infer", content=text + payload, headers={**headers, **AUTH}, timeout=10)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert fragment in error and "\n" not in error and "Traceback" not in error, error


def test_binary_bodies_keep_the_json_limits(url: str) -> None:
    # More images than --max-batch: refused from the header, before any byte of the tensor is read as one.
    body, headers = binary_body(_tensor(count=MAX_BATCH + 1, size=(MAX_BATCH + 1) * 784), bytes((MAX_BATCH + 1) * 784))
    answer = httpx.post(f"{url}/v2/models/mnist/infer", content=body, headers=headers, timeout=10)
    assert answer.status_code == 413 and "too many images" in answer.json()["error"]
    # A body over --max-body-bytes: 413 from Content-Length, as for JSON.
    body, headers = binary_body(_tensor(count=1300, size=1300 * 784), bytes(1300 * 784))
    assert httpx.post(f"{url}/v2/models/mnist/infer", content=body, headers=headers, timeout=10).status_code == 413
    # Binary is announced by the header length: without it, octet-stream stays refused (415).
    plain = httpx.post(f"{url}/v2/models/mnist/infer", content=b"{}", timeout=10,
                       headers={"Content-Type": "application/octet-stream", **AUTH})  # fmt: skip
    assert plain.status_code == 415
    body, headers = binary_body(_tensor(), PIXELS)
    typed = httpx.post(f"{url}/v2/models/mnist/infer", content=body, timeout=10,
                       headers={"Content-Type": "application/octet-stream", **headers})  # fmt: skip
    assert typed.status_code == 200, typed.text
