"""Every served prediction has an id and is logged; POST /feedback; `mnist feedback ls|show|export`. One real
`mnist serve` process on an SQLite registry for the module (its model card says when to answer "not a digit"), and
one whose database is down (a PostgreSQL URL where nothing listens)."""

import base64
import hashlib
import io
import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from launch.server import free_port
from mnist_core.data.extra import read_extra, scan_extra
from mnist_core.registry import feedback_command
from tests.support.feedback import cross_png, prepared, rows, run_with_rule, scores
from tests.support.serving import digit_png, start_server, stop_server, wait_until

pytestmark = pytest.mark.slow

TOKEN = "feedback-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PER_MINUTE = 40
MAX_BODY = 200_000


class Served:
    def __init__(self, url: str, root: Path, log: Path, digits: list[tuple[bytes, int]]) -> None:
        self.url, self.root, self.log, self.digits = url, root, log, digits
        self.client = httpx.Client(base_url=url, headers=AUTH, timeout=10)
        self.db = f"sqlite:///{root / 'registry.db'}"

    def predict(self, *pngs: bytes, prepared: bool = False) -> list[dict]:
        files = [("file", (f"{index}.png", png)) for index, png in enumerate(pngs)]
        answer = self.client.post("/predict" + ("?prepared=1" if prepared else ""), files=files)
        assert answer.status_code == 200, answer.text
        return answer.json()["predictions"]

    def logged(self, prediction_id: str) -> dict:
        def find() -> dict | None:
            return next((row for row in rows(self.db, "predictions") if row["id"] == prediction_id), None)

        wait_until(find, timeout=10, every=0.1)
        return find()  # type: ignore[return-value]


@pytest.fixture(scope="module")
def served(
    small_mnist_onnx: Path, mnist_tensors: dict[str, torch.Tensor], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """A server whose card refuses above a threshold between the scores of real digits and of a drawn X."""
    root = tmp_path_factory.mktemp("feedback-runs")
    images, labels = mnist_tensors["test_images"][:6].numpy(), mnist_tensors["test_labels"][:6].tolist()
    digits = [(digit_png(image, 4), int(label)) for image, label in zip(images, labels, strict=True)]
    digit_scores = scores(small_mnist_onnx, np.stack([prepared(png) for png, _ in digits]))
    cross_score = scores(small_mnist_onnx, prepared(cross_png())[None])[0]
    assert digit_scores.max() < cross_score, (digit_scores, cross_score)  # the small model tells them apart
    run_dir = run_with_rule(root, "run-nad", small_mnist_onnx, (digit_scores.max() + cross_score) / 2)
    log = root.parent / "feedback-serve.log"
    flags = ["--model", str(run_dir), "--log-flush-seconds", "0.3", "--feedback-per-minute", str(PER_MINUTE),
             "--max-body-bytes", str(MAX_BODY)]  # fmt: skip
    process, url = start_server(root, log, *flags, token=TOKEN)
    try:
        wait_until(lambda: httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200, timeout=20)
        yield Served(url, root, log, digits)
    finally:
        stop_server(process)


def test_predictions_have_ids_the_answer_not_a_digit_and_the_image_seen(served: Served) -> None:
    (digit_png_bytes, label), cross = served.digits[0], cross_png()
    digit, refused = served.predict(digit_png_bytes, cross, prepared=True)
    assert digit["id"] != refused["id"]
    assert (digit["class"], digit["not_a_digit"]) == (label, False)
    assert refused["class"] == 10 and refused["class_name"] == "not a digit" and refused["not_a_digit"] is True
    assert refused["not_a_digit_score"] > digit["not_a_digit_score"]
    # confidence and top-3 still describe the best digits
    assert refused["confidence"] == refused["top3"][0]["probability"] and refused["top3"][0]["class"] < 10
    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(refused["prepared"]))))
    assert np.array_equal(seen, prepared(cross))
    row = served.logged(refused["id"])
    assert row["class"] == 10 and row["image"] == seen.tobytes() and len(row["image"]) == 784
    assert row["image_sha256"] == hashlib.sha256(seen.tobytes()).hexdigest() and row["route"] == "predict"
    assert row["run_id"] == "run-nad" and len(row["model_sha256"]) == 64
    assert abs(row["not_a_digit_score"] - refused["not_a_digit_score"]) < 1e-9
    assert "prepared" not in served.predict(digit_png_bytes)[0]  # only when asked for


def test_v2_reserves_class_10_and_names_each_prediction(served: Served) -> None:
    images = np.stack([prepared(served.digits[1][0]), prepared(cross_png())])
    tensor = {"name": "images", "shape": [2, 28, 28], "datatype": "UINT8", "data": images.ravel().tolist()}
    answer = served.client.post("/v2/models/mnist/infer", json={"inputs": [tensor]}).json()
    outputs = {output["name"]: output for output in answer["outputs"]}
    assert outputs["class"]["data"] == [served.digits[1][1], 10]
    assert outputs["not_a_digit_score"]["datatype"] == "FP32" and len(outputs["not_a_digit_score"]["data"]) == 2
    ids = answer["parameters"]["prediction_ids"]
    assert len(set(ids)) == 2 and served.logged(ids[1])["route"] == "v2"
    metadata = served.client.get("/v2/models/mnist").json()
    assert {"name": "not_a_digit_score", "datatype": "FP32", "shape": [-1]} in metadata["outputs"]
    assert metadata["parameters"]["reserved_class"] == {"index": 10, "name": "not a digit"}


def test_feedback_by_id_is_stored_once_with_its_image(served: Served) -> None:
    prediction = served.predict(served.digits[2][0])[0]  # answered at once: found in memory, before any flush
    first = served.client.post("/feedback", json={"prediction_id": prediction["id"], "label": 3})
    again = served.client.post("/feedback", json={"prediction_id": prediction["id"], "label": 3})
    assert first.status_code == again.status_code == 200, first.text
    assert first.json()["feedback_id"] == again.json()["feedback_id"] and again.json()["duplicate"] is True
    stored = [row for row in rows(served.db, "feedback") if row["prediction_id"] == prediction["id"]]
    assert len(stored) == 1 and stored[0]["label"] == 3 and stored[0]["predicted_class"] == prediction["class"]
    blob = Path(stored[0]["image_uri"])  # the local artifact store: content-addressed
    assert blob.read_bytes() == served.logged(prediction["id"])["image"]
    assert blob.name == stored[0]["image_sha256"] == hashlib.sha256(blob.read_bytes()).hexdigest()
    refused = served.client.post("/feedback", json={"prediction_id": prediction["id"], "label": "not-a-digit"})
    assert refused.json()["label"] == 10 and refused.json()["feedback_id"] != first.json()["feedback_id"]


def test_feedback_with_an_image_json_or_multipart_is_stored_once(served: Served) -> None:
    png, label = served.digits[4]
    as_json = served.client.post("/feedback", json={"image": base64.b64encode(png).decode(), "label": label})
    as_form = served.client.post("/feedback", files={"file": ("d.png", png)}, data={"label": str(label)})
    assert as_json.status_code == as_form.status_code == 200, (as_json.text, as_form.text)
    assert as_json.json()["feedback_id"] == as_form.json()["feedback_id"] and as_form.json()["duplicate"]
    row = next(row for row in rows(served.db, "feedback") if row["id"] == as_json.json()["feedback_id"])
    assert row["prediction_id"] is None and row["image_sha256"] == hashlib.sha256(prepared(png).tobytes()).hexdigest()


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"json": {"prediction_id": "no-such-id", "label": 1}}, 404),
        ({"json": {"image": base64.b64encode(b"not an image").decode(), "label": 1}}, 400),
        ({"json": {"label": 1}}, 400),
        ({"files": {"file": ("big.png", b"\0" * (MAX_BODY + 1))}, "data": {"label": "1"}}, 413),
        ({"content": b"label=1", "headers": {"Content-Type": "text/plain"}}, 415),
    ],
)
def test_bad_feedback_is_a_4xx_with_one_line(served: Served, body: dict, status: int) -> None:
    answer = served.client.post("/feedback", **body)
    assert answer.status_code == status, answer.text
    assert list(answer.json()) == ["error"] and "\n" not in answer.json()["error"]


@pytest.mark.parametrize("label", [11, -1, "eleven", True, None])
def test_a_label_outside_the_classes_is_422(served: Served, label: object) -> None:
    prediction_id = served.predict(served.digits[0][0])[0]["id"]
    answer = served.client.post("/feedback", json={"prediction_id": prediction_id, "label": label})
    assert answer.status_code == 422 and list(answer.json()) == ["error"], answer.text


def test_feedback_wants_the_token_and_is_counted(served: Served) -> None:
    assert httpx.post(f"{served.url}/feedback", json={"prediction_id": "x", "label": 1}).status_code == 401
    metrics = served.client.get("/metrics").text
    assert 'mnist_serve_feedback_total{outcome="stored"}' in metrics
    assert 'mnist_serve_predictions_total{class_name="not a digit"}' in metrics
    logged = next(line for line in metrics.splitlines() if line.startswith("mnist_serve_predictions_logged_total"))
    assert float(logged.split()[-1]) >= 3
    assert "mnist_serve_predictions_dropped_total 0.0" in metrics


def test_mnist_feedback_ls_show_and_export_for_extra_data(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--output-dir", str(served.root)]
    assert feedback_command.main(["ls", *common]) == 0
    listing = capsys.readouterr().out
    assert "corrections; no mnist champion yet" in listing and "run-nad" in listing
    assert feedback_command.main(["ls", "--json", *common]) == 0
    recorded = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert feedback_command.main(["show", str(recorded[0]["id"]), "--json", *common]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["feedback"]["label"] == recorded[0]["label"] and shown["prediction"]["class"] is not None
    assert feedback_command.main(["show", "999999", *common]) == 1
    assert feedback_command.main(["export", str(tmp_path / "export"), *common]) == 0
    refused = list((tmp_path / "export" / "not-a-digit").glob("*.png"))
    assert len(refused) == sum(1 for row in recorded if row["label"] == 10) >= 1
    # The whole export is what `--extra-data` reads: digits by class, not-a-digit/ as the reserved class 10.
    images, labels = read_extra(scan_extra(tmp_path / "export", "mnist"))
    assert sorted(labels.tolist()) == sorted(row["label"] for row in recorded)
    assert images.shape[1:] == (28, 28)


def test_export_skips_what_it_cannot_read_and_exports_the_rest(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by a fault battery: one image gone, damaged or pointing elsewhere, or one label no class has, stopped the
    whole export (a traceback for the label), and a row's image URI made folders where it pointed. A copy of the
    output root, damaged: each bad row is a line and skipped, the others exported; a DIR that is a file, one line."""
    root = tmp_path / "copy"
    shutil.copytree(served.root, root)
    with sqlite3.connect(root / "registry.db") as database:
        ids = [row[0] for row in database.execute("SELECT id FROM feedback ORDER BY id")]
        assert len(ids) >= 3, ids
        columns = "at, dataset, label, prediction_id, predicted_class, run_id, model_sha256, image_sha256, image_uri"
        database.execute(
            f"INSERT INTO feedback (key, {columns}) SELECT 'copy-' || key, {columns} FROM feedback WHERE id = ?",
            (ids[2],),
        )  # fmt: skip: one good row besides the three damaged below
        ids = [row[0] for row in database.execute("SELECT id FROM feedback ORDER BY id")]
        nowhere = tmp_path / "nowhere" / "store"
        database.execute("UPDATE feedback SET image_uri = ? WHERE id = ?", (f"{nowhere}/blobs/sha256/ab", ids[0]))
        database.execute("UPDATE feedback SET label = 99 WHERE id = ?", (ids[1],))
        database.execute("UPDATE feedback SET image_sha256 = ? WHERE id = ?", ("0" * 64, ids[2]))
    common = ["--output-dir", str(root)]
    capsys.readouterr()
    assert feedback_command.main(["export", str(tmp_path / "export"), *common]) == 0
    said = capsys.readouterr()
    assert f"feedback {ids[0]} has no image (skipped)" in said.err and not nowhere.parent.exists()
    assert f"feedback {ids[1]}: label 99 is no class of mnist (skipped)" in said.err
    assert f"feedback {ids[2]}: " in said.err and "Traceback" not in said.err
    exported = list((tmp_path / "export").rglob("*.png"))
    assert len(exported) == len(ids) - 3 and f"{len(ids) - 3} images in" in said.out
    (tmp_path / "no-runs").mkdir()
    assert feedback_command.main(["export", str(tmp_path / "none"), "--output-dir", str(tmp_path / "no-runs")]) == 0
    assert capsys.readouterr().out == "mnist feedback: no mnist corrections to export (nothing written)\n"
    assert not (tmp_path / "none").exists()
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    assert feedback_command.main(["export", str(a_file), *common]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the same three skipped rows
    assert last.startswith(f"mnist feedback: error: {a_file}/") and "cannot write" in last, last


def test_too_many_feedback_requests_from_one_client_are_429(served: Served) -> None:
    answers = [served.client.post("/feedback", json={"prediction_id": "x", "label": 1}) for _ in range(PER_MINUTE)]
    assert answers[-1].status_code == 429 and list(answers[-1].json()) == ["error"], answers[-1].text


@pytest.fixture(scope="module")
def down(small_mnist_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A server whose registry database is a PostgreSQL where nothing listens: down from the start."""
    root = tmp_path_factory.mktemp("feedback-down")
    run_dir = run_with_rule(root, "run-down", small_mnist_onnx, 1e9)
    log = root.parent / "down-serve.log"
    before = os.environ.get("MNIST_REGISTRY_URL")
    os.environ["MNIST_REGISTRY_URL"] = f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/registry"
    try:
        process, url = start_server(root, log, "--model", str(run_dir), "--log-flush-seconds", "0.2", token=TOKEN)
    finally:
        os.environ.pop("MNIST_REGISTRY_URL") if before is None else os.environ.update(MNIST_REGISTRY_URL=before)
    try:
        wait_until(lambda: httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200, timeout=20)
        yield url, log
    finally:
        stop_server(process)


def test_database_down_predict_answers_and_counts_feedback_is_503(down: tuple[str, Path], served: Served) -> None:
    url, log = down
    client = httpx.Client(base_url=url, headers=AUTH, timeout=10)
    ids = []
    for _ in range(3):
        answer = client.post("/predict", files={"file": ("d.png", served.digits[0][0])})
        assert answer.status_code == 200, answer.text
        ids.append(answer.json()["predictions"][0]["id"])

    def dropped() -> float:
        line = next(line for line in client.get("/metrics").text.splitlines()
                    if line.startswith("mnist_serve_predictions_dropped_total"))  # fmt: skip
        return float(line.split()[-1]) >= 3

    wait_until(dropped, timeout=10, every=0.1)
    assert log.read_text().count("the prediction log cannot be written") == 1  # one line for the outage
    for body in ({"prediction_id": ids[0], "label": 5}, {"image": base64.b64encode(served.digits[0][0]).decode(),
                                                          "label": 5}):  # fmt: skip
        answer = client.post("/feedback", json=body)
        assert answer.status_code == 503 and list(answer.json()) == ["error"], answer.text
        assert "\n" not in answer.json()["error"] and answer.json()["error"].startswith("feedback not stored: ")
