"""POST /feedback: a person says what a prediction should have been (or that it was right), or sends an image with
its label that never went through /predict. Stored durably in the registry's database (`feedback` table) with the
prepared image in the artifact store (registry/feedback.py); the same correction twice is one row.

    {"prediction_id": "...", "label": 7}            JSON, a prediction made by this server (or any that logged it)
    {"prediction_id": "...", "label": "not-a-digit"}
    {"image": "<base64 image file>", "label": 7}    JSON, an image of its own (prepared as /predict prepares it)
    -F file=@digit.png -F label=7                   multipart, the same

Refusals are one line `{"error": ...}`: 400 (not an image, neither an id nor an image), 404 (unknown prediction id),
413 (body too large), 422 (a label outside the classes), 429 (over `feedback_per_minute` from one client address),
503 (the database or the artifact store cannot be used).
"""

import base64
import binascii
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from prometheus_client import Counter
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from mnist_core.data.idx import CLASS_NAMES
from mnist_core.errors import PipelineError
from mnist_core.evaluation.novelty import REFUSED_CLASS, refused_name
from mnist_core.registry.feedback import FeedbackEntry, FeedbackStore
from mnist_core.serving.inputs import MAX_FIELD_BYTES, BadInput, Upload, count_pixels, parse_json, prepare
from mnist_core.serving.prediction_log import PredictionLog
from mnist_core.serving.settings import ServeSettings
from mnist_core.stamps import utc_iso

NOT_A_DIGIT = "not-a-digit"  # the label for "not one of the classes", whatever the dataset


def parse_label(value: object, dataset: str) -> int:
    """0-9 (a number, or its text), a class name (Fashion-MNIST), or "not-a-digit" (the reserved class 10)."""
    names = CLASS_NAMES[dataset]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= REFUSED_CLASS:
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit() and str(int(text)) == text and int(text) <= REFUSED_CLASS:
            return int(text)
        keys = {name.lower(): index for index, name in enumerate(names)}
        keys |= {NOT_A_DIGIT: REFUSED_CLASS, refused_name(dataset): REFUSED_CLASS}
        if text.lower() in keys:
            return keys[text.lower()]
    raise BadInput(422, f"label {str(value)[:40]!r} is not a class of {dataset}: 0-{len(names) - 1} or "
                        f'"{NOT_A_DIGIT}"')  # fmt: skip


async def read_request(request: Request) -> tuple[str | None, Upload | None, object]:
    """(prediction id, image, label) from a JSON or multipart body."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "application/json":
        document = parse_json(await request.body())
        if not isinstance(document, dict):
            raise BadInput(400, 'expected {"prediction_id": "...", "label": 7} or {"image": "<base64>", "label": 7}')
        image = document.get("image")
        upload = None
        if image is not None:
            if not isinstance(image, str):
                raise BadInput(400, "image must be a base64 string (or a data: URL)")
            try:
                text = image.split(",", 1)[1] if image.startswith("data:") else image
                content = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError, IndexError):
                raise BadInput(400, "image is not base64") from None
            upload = Upload("image", content)
        prediction_id = document.get("prediction_id")
        if prediction_id is not None and not isinstance(prediction_id, str):
            raise BadInput(400, "prediction_id must be a string")
        return prediction_id, upload, document.get("label")
    if media_type == "multipart/form-data":
        try:
            async with request.form(max_files=1, max_fields=4, max_part_size=MAX_FIELD_BYTES) as form:
                file, label, prediction_id = form.get("file"), form.get("label"), form.get("prediction_id")
                upload = Upload(file.filename or "file", await file.read()) if isinstance(file, UploadFile) else None
        except HTTPException as error:  # Starlette's refusal of the multipart body
            raise BadInput(400, f"malformed multipart body ({error.detail}): send one file and a label") from None
        return (prediction_id if isinstance(prediction_id, str) else None), upload, label
    raise BadInput(415, "Content-Type: send application/json or multipart/form-data (file + label)")


def prepared_image(upload: Upload, settings: ServeSettings) -> np.ndarray:
    """The image as /predict prepares it; an image that is not one is a 400 here (the client sent the wrong thing)."""
    count_pixels([upload], settings.max_pixels)
    try:
        return prepare([upload], settings.dataset)[0]
    except BadInput as error:
        raise BadInput(400, error.message) from None


def add_feedback_route(
    app: FastAPI,
    settings: ServeSettings,
    log: PredictionLog,
    counter: Counter,
    guarded: list[Any],
    limited_request: Any,
    stored: Callable[[], None] = lambda: None,
) -> None:
    """POST /feedback on `app`, behind the token (`guarded`) and the body limits (`limited_request`); `stored` is
    called after each new correction (the announcer counts them)."""
    limiter = MovingWindowRateLimiter(MemoryStorage())
    rate = RateLimitItemPerMinute(settings.feedback_per_minute)
    stores: list[FeedbackStore] = []  # made on first use: the database may be down when the server starts

    def store() -> FeedbackStore:
        if not stores:
            stores.append(FeedbackStore(settings.output_dir))
        return stores[0]

    def record(prediction_id: str | None, image: np.ndarray | None, label: int) -> tuple[int, bool, dict[str, Any]]:
        logged = None
        if prediction_id is not None:
            logged = log.recent(prediction_id) or store().prediction(prediction_id)
            if logged is None:
                raise BadInput(404, f"no prediction {prediction_id[:60]!r} (ids come from /predict and v2 answers)")
        entry = FeedbackEntry(
            dataset=logged["dataset"] if logged else settings.dataset,
            label=label,
            at=utc_iso(),
            image=logged["image"] if logged else image.tobytes() if image is not None else None,
            prediction_id=prediction_id,
            predicted_class=logged["class"] if logged else None,
            run_id=logged["run_id"] if logged else None,
            model_sha256=logged["model_sha256"] if logged else None,
        )
        feedback_id, duplicate = store().add(entry)
        return feedback_id, duplicate, {"predicted_class": entry.predicted_class}

    @app.post("/feedback", dependencies=guarded)
    async def feedback(request: limited_request) -> JSONResponse:  # type: ignore[valid-type]
        client = request.client.host if request.client else "unknown"
        if not limiter.hit(rate, client):
            raise BadInput(429, f"over {settings.feedback_per_minute} feedback requests a minute from {client}: "
                                "wait a minute")  # fmt: skip
        prediction_id, upload, raw_label = await read_request(request)
        if (prediction_id is None) == (upload is None):
            raise BadInput(400, 'send "prediction_id" or an image ("image" in JSON, or a file), with a "label"')
        label = parse_label(raw_label, settings.dataset)
        image = prepared_image(upload, settings) if upload is not None else None
        try:
            feedback_id, duplicate, facts = await run_in_threadpool(record, prediction_id, image, label)
        except PipelineError as error:  # the database or the artifact store: StorageError, or a damaged object
            raise BadInput(503, f"feedback not stored: {error}") from None
        counter.labels("duplicate" if duplicate else "stored").inc()
        if not duplicate:
            stored()
        names = [*CLASS_NAMES[settings.dataset], refused_name(settings.dataset)]
        return JSONResponse({"feedback_id": feedback_id, "duplicate": duplicate, "prediction_id": prediction_id,
                             "label": label, "label_name": names[label], **facts})  # fmt: skip
