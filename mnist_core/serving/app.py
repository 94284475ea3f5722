"""The ASGI app of `mnist serve`: the page, `/predict`, the Open Inference Protocol v2 routes, `/feedback`
(feedback_route.py), `/metrics`. Every prediction gets an id, the not-a-digit decision of the model card's rule
(class 10 when refused), and is handed to the prediction log (prediction_log.py), which writes it off the request
path.

The token is FastAPI's bearer security dependency on every route but health; the body limit and the slow-client
timeout are a dependency of the routes that read a body; multipart uploads are parsed by Starlette
(python-multipart). Inference of a few images runs on the event loop (a tiny MLP: well under a millisecond, less
than a hop to the thread pool); larger batches go to the thread pool so one big request does not stall the others.
"""

import asyncio
import base64
import calendar
import gzip
import hmac
import io
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mnist_core.data.idx import CLASS_NAMES
from mnist_core.evaluation.novelty import REFUSED_CLASS, refuse, refused_name
from mnist_core.inference.predict import softmax
from mnist_core.registry.feedback import FeedbackStore
from mnist_core.serving.announce import FeedbackAnnouncer
from mnist_core.serving.feedback_route import add_feedback_route
from mnist_core.serving.follower import ModelFollower, Served
from mnist_core.serving.inputs import (
    BadInput,
    Upload,
    count_pixels,
    prepare,
    tensor_from_v2,
    uploads_from_form,
    uploads_from_json,
)
from mnist_core.serving.prediction_log import Batch, PredictionLog
from mnist_core.serving.settings import ServeSettings
from mnist_core.serving.v2_binary import BINARY_CONTENT_TYPES, HEADER_LENGTH, binary_outputs, split_v2_body, v2_response
from mnist_core.stamps import utc_iso

PAGE = Path(__file__).with_name("page.html")
# Up to this many images, and pixels to decode, are prepared and run on the event loop (well under a millisecond
# each); more go to the thread pool, so one big request does not stall the others.
INLINE_IMAGES = 4
INLINE_PIXELS = 512 * 512
TOKEN_HELP = "missing or wrong token (send: Authorization: Bearer $MNIST_SERVE_TOKEN)"
BEARER = HTTPBearer(auto_error=False)  # None rather than FastAPI's own 401/403, so the answer says what to send
TOKEN_IN_ADDRESS = APIKeyQuery(name="token", auto_error=False)  # the page only: a browser opening it has no header


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter("mnist_serve_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=self.registry)  # fmt: skip
        self.latency = Histogram("mnist_serve_request_seconds", "Request latency by route", ["route"],
                                 buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
                                 registry=self.registry)  # fmt: skip
        self.predictions = Counter("mnist_serve_predictions", "Predictions by class", ["class_name"],
                                   registry=self.registry)  # fmt: skip
        self.feedback = Counter("mnist_serve_feedback", "Feedback stored (new, or the same correction again)",
                                ["outcome"], registry=self.registry)  # fmt: skip


class LogCollector:
    """The prediction log's counts, read from it at each scrape (its thread keeps them)."""

    def __init__(self, log: PredictionLog) -> None:
        self.log = log

    def collect(self) -> Any:
        logged = CounterMetricFamily("mnist_serve_predictions_logged", "Predictions written to the prediction log")
        logged.add_metric([], self.log.logged)
        yield logged
        dropped = CounterMetricFamily("mnist_serve_predictions_dropped", "Predictions served but not logged (the "
                                      "database down or slow, the queue full)")  # fmt: skip
        dropped.add_metric([], self.log.dropped)
        yield dropped


class ConfidenceHistogram:
    """The calibrated confidence of every answer (of the best class, refused answers included, as the log keeps it),
    and the champion's age: what a dashboard watches between two runs of the drift monitor (docs/monitoring.md).
    Counted with numpy a batch at a time: prometheus_client's Histogram.observe per image cost ~1 us each, a
    millisecond on a 1,024-image v2 batch."""

    BUCKETS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0)

    def __init__(self, follower: ModelFollower) -> None:
        self.follower = follower
        self._lock = threading.Lock()
        self._counts = np.zeros(len(self.BUCKETS) + 1, dtype=np.int64)  # the last: above 1.0 (never), for +Inf
        self._sum = 0.0

    def observe(self, confidences: np.ndarray) -> None:
        counts = np.bincount(np.searchsorted(self.BUCKETS, confidences), minlength=len(self._counts))
        with self._lock:  # requests run on the event loop and in the thread pool
            self._counts += counts
            self._sum += float(confidences.sum())

    def collect(self) -> Any:
        with self._lock:
            cumulative, total = np.cumsum(self._counts), self._sum
        buckets = [(str(edge), int(n)) for edge, n in zip(self.BUCKETS, cumulative, strict=False)]
        histogram = HistogramMetricFamily("mnist_serve_confidence", "Calibrated confidence of each answer's best class")
        histogram.add_metric([], [*buckets, ("+Inf", int(cumulative[-1]))], total)
        yield histogram
        age = GaugeMetricFamily("mnist_serve_model_age_seconds", "Seconds since the served model's run was created "
                                "(from its run id; absent for a model file outside any run)")  # fmt: skip
        served = self.follower.current
        created = _run_created(served.run_id) if served else None
        if created is not None:
            age.add_metric([], time.time() - created)
        yield age


def _run_created(run_id: str | None) -> float | None:
    """When a run was created: its id starts with the UTC time (export/run_folder.new_run_id)."""
    try:
        return calendar.timegm(time.strptime((run_id or "")[:16], "%Y%m%dT%H%M%SZ"))
    except ValueError:
        return None


@dataclass(frozen=True)
class Answers:
    """What the model said about a batch: probabilities and the best three of the dataset's classes, the
    not-a-digit scores, and the answer (the best class, or REFUSED_CLASS), one id per image."""

    probabilities: np.ndarray
    ranked: np.ndarray
    scores: np.ndarray
    refused: np.ndarray
    classes: np.ndarray
    ids: list[str]


class FollowerCollector:
    """The model's state, read from the follower at each scrape (no second copy to keep in step)."""

    def __init__(self, follower: ModelFollower) -> None:
        self.follower = follower

    def collect(self) -> Any:
        served, follower = self.follower.current, self.follower
        ready = GaugeMetricFamily("mnist_serve_ready", "1 when a model is loaded and answering")
        ready.add_metric([], 1.0 if served else 0.0)
        yield ready
        info = GaugeMetricFamily("mnist_serve_model_info", "The model served", labels=["run_id", "sha256", "dataset"])
        if served:
            info.add_metric([served.run_id or "", served.sha256, served.dataset], 1.0)
        yield info
        swaps = CounterMetricFamily("mnist_serve_model_swaps", "Models swapped in (the first load included)")
        swaps.add_metric([], follower.swaps)
        yield swaps
        failed = CounterMetricFamily("mnist_serve_model_swap_failures", "New models refused (missing, damaged...)")
        failed.add_metric([], follower.failed_swaps)
        yield failed
        problem = GaugeMetricFamily("mnist_serve_model_problem_info", "Why not ready, or why the latest new model "
                                    "was refused (absent when all is well)", labels=["reason"])  # fmt: skip
        if follower.problem:
            problem.add_metric([follower.problem[:300]], 1.0)
        yield problem


class AnnouncerCollector:
    """Corrections no run has trained on, as last counted (absent while the database cannot be read), and the
    announcements this process sent."""

    def __init__(self, announcer: FeedbackAnnouncer) -> None:
        self.announcer = announcer

    def collect(self) -> Any:
        pending = GaugeMetricFamily("mnist_serve_corrections_pending", "Corrections no run has trained on yet")
        if self.announcer.pending is not None:
            pending.add_metric([], float(self.announcer.pending))
        yield pending
        sent = CounterMetricFamily("mnist_serve_feedback_announcements", "mnist.feedback.ready events sent")
        sent.add_metric([], self.announcer.announced)
        yield sent


class FastJSON(JSONResponse):
    """JSON by orjson, numpy arrays included: the answers skip FastAPI's validation and encoding of plain data
    (a v2 answer of 256 x 10 floats took longer to encode than to compute)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class RequestMetrics:
    """Requests counted by route and status, and timed. Pure ASGI, because only the response's start message
    carries the status every request ends with, including what the router answers itself (404, 405) and what the
    exception handlers answer; a FastAPI dependency never sees the status, and a route class would have to guess it
    from the exception and would miss unmatched requests. It reads nothing of the request and changes nothing."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception no handler answered: Starlette's error middleware outside this one sends 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            label = getattr(scope.get("route"), "path", None) or "unmatched"  # the template: bounded label values
            self.metrics.requests.labels(label, str(status)).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - started)


V2_OUTPUTS = ["probabilities", "class", "not_a_digit_score"]


def predictions_json(
    served: Served, uploads: list[Upload], answers: Answers, prepared: np.ndarray | None
) -> list[dict[str, Any]]:
    """/predict's answer per image; `prepared`: the images the model saw, to send back as PNGs."""
    refused_as = refused_name(served.dataset)
    predictions = []
    for index, upload in enumerate(uploads):
        probs, top, refused = answers.probabilities[index], answers.ranked[index], bool(answers.refused[index])
        best = int(top[0])
        prediction = {
            "id": answers.ids[index],
            "input": upload.name,
            "class": REFUSED_CLASS if refused else best,
            "class_name": refused_as if refused else served.class_names[best],
            "confidence": float(probs[best]),  # of the best digit, also when refused
            "top3": [{"class": int(k), "class_name": served.class_names[int(k)], "probability": float(probs[k])}
                     for k in top],
            "not_a_digit": refused,
            "not_a_digit_score": float(answers.scores[index]),
        }  # fmt: skip
        if prepared is not None:
            prediction["prepared"] = png_base64(prepared[index])
        predictions.append(prediction)
    return predictions


def png_base64(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image, "L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# Content-Encoding -> zlib's window bits: gzip's header, or (HTTP's "deflate") zlib's; 32 + takes either.
BODY_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": 32 + zlib.MAX_WBITS}


def body_limits(settings: ServeSettings) -> Callable[[Request], Any]:
    """A dependency giving the request with its body limited: over `max_body_bytes` (declared by Content-Length or
    counted while a chunked body arrives) 413, a client that sends nothing for `body_timeout_s` 408. A body sent
    compressed (Content-Encoding gzip or deflate: NVIDIA's tritonclient with `request_compression_algorithm`) is
    decompressed as it arrives, the limit applying to what it decompresses to: a small bomb is refused early."""
    limit, timeout = settings.max_body_bytes, settings.body_timeout_s
    too_large = f"request body over the limit of {limit} bytes (--max-body-bytes)"

    async def limited(request: Request) -> Request:
        length = request.headers.get("content-length")
        if length is not None and not length.isdigit():
            raise BadInput(400, "Content-Length is not a number")
        if length is not None and int(length) > limit:
            raise BadInput(413, too_large)
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", "", *BODY_ENCODINGS):
            raise BadInput(415, f"Content-Encoding {encoding[:40]}: this server reads gzip or deflate bodies, or "
                                "uncompressed ones")  # fmt: skip
        inflate = zlib.decompressobj(BODY_ENCODINGS[encoding]) if encoding in BODY_ENCODINGS else None
        received = decoded = 0

        async def receive() -> Message:
            nonlocal received, decoded
            try:
                async with asyncio.timeout(timeout):
                    message = await request.receive()
            except TimeoutError:
                raise BadInput(408, f"the request body did not arrive within {timeout:g} s") from None
            received += len(message.get("body", b""))
            if received > limit:
                raise BadInput(413, too_large)
            if inflate is not None and message["type"] == "http.request":
                try:
                    body = inflate.decompress(message.get("body", b""), limit - decoded + 1)
                    if not message.get("more_body", False) and not inflate.unconsumed_tail:
                        body += inflate.flush()
                except zlib.error as error:
                    raise BadInput(
                        400, f"Content-Encoding {encoding}: the body is not {encoding} data ({error})"
                    ) from None
                decoded += len(body)
                if decoded > limit or inflate.unconsumed_tail:
                    raise BadInput(413, f"{too_large}, decompressed")
                if inflate.unused_data:  # a second gzip member or trailing bytes: not read silently as nothing
                    raise BadInput(400, f"Content-Encoding {encoding}: data after the end of the compressed body")
                if not message.get("more_body", False) and not inflate.eof:
                    raise BadInput(400, f"Content-Encoding {encoding}: the compressed body ends early")
                message = {**message, "body": body}
            return message

        # The same request read through the limited receive: request.body() and request.form() stream from it.
        return Request(request.scope, receive)

    return limited


def compressed(response: Response, accepted: str) -> Response:
    """The v2 answer gzip- or deflate-compressed when the client asks for it (tritonclient's
    `response_compression_algorithm` sends Accept-Encoding: gzip or deflate, and reads Content-Encoding back)."""
    wanted = next((name for name in ("gzip", "deflate") if name in _codings(accepted)), None)
    if wanted is None or len(response.body) < 1024:  # a small answer compressed is no smaller
        return response
    body = gzip.compress(response.body) if wanted == "gzip" else zlib.compress(response.body)
    headers = {key: value for key, value in response.headers.items() if key.lower() != "content-length"}
    return Response(body, headers={**headers, "Content-Encoding": wanted, "Vary": "Accept-Encoding"})


def _codings(accept_encoding: str) -> set[str]:
    """The codings an Accept-Encoding header allows: those named without a weight of 0 (RFC 9110, 12.5.3)."""
    allowed = set()
    for part in accept_encoding.split(","):
        name, _, parameters = part.partition(";")
        weight = parameters.strip().lower()
        if weight.startswith("q="):
            try:
                if float(weight[2:]) <= 0:
                    continue
            except ValueError:
                continue  # a weight that is no number: not an offer to rely on
        allowed.add(name.strip().lower())
    return allowed


def create_app(settings: ServeSettings, follower: ModelFollower | None = None, *, token: str | None = None) -> FastAPI:
    """The app; with a `token`, every route but health wants it (the page also takes it in its address)."""
    follower = follower or ModelFollower(settings.model, settings.output_dir, settings.dataset, settings.poll_seconds)
    metrics = Metrics()
    metrics.registry.register(FollowerCollector(follower))
    confidence = ConfidenceHistogram(follower)
    metrics.registry.register(confidence)
    log = PredictionLog(lambda: FeedbackStore(settings.output_dir), settings.log_queue, settings.log_flush_seconds,
                        settings.image_retention_days, settings.recent_predictions)  # fmt: skip
    metrics.registry.register(LogCollector(log))
    announcer = FeedbackAnnouncer(FeedbackStore(settings.output_dir), settings.dataset,
                                  settings.feedback_retrain_after, settings.events_url)  # fmt: skip
    metrics.registry.register(AnnouncerCollector(announcer))
    class_names = CLASS_NAMES[settings.dataset]
    page = PAGE.read_bytes()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(follower.start)
        log.start()
        announcer.start()
        yield
        await run_in_threadpool(follower.stop)
        await run_in_threadpool(log.stop)
        await run_in_threadpool(announcer.stop)

    app = FastAPI(title="mnist serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.follower, app.state.metrics, app.state.log = follower, metrics, log
    app.state.announcer = announcer

    def model_or_503() -> Served:
        served = follower.current  # taken once: this request finishes on this model, whatever is swapped in meanwhile
        if served is None:
            raise BadInput(503, f"no model to answer with: {follower.problem}")
        return served

    def answer(served: Served, images: np.ndarray, route: str) -> Answers:
        """The model's answers, counted, and handed to the prediction log (which writes them off this path)."""
        logits = served.predictor.logits(images)
        probabilities = softmax(logits, served.temperature)
        ranked = np.argsort(-probabilities, axis=1, kind="stable")[:, :3]
        scores, refused = refuse(logits, served.not_a_digit, images)
        classes = np.where(refused, REFUSED_CLASS, ranked[:, 0])
        names = [*served.class_names, refused_name(served.dataset)]
        for best in classes:
            metrics.predictions.labels(names[int(best)]).inc()
        first, ids = log.new_ids(len(images))
        confidences = probabilities[np.arange(len(images)), ranked[:, 0]]
        confidence.observe(confidences)
        log.record(Batch(ids, first, utc_iso(), served.dataset, served.run_id, served.sha256, classes, confidences,
                         scores, images, route))  # fmt: skip
        return Answers(probabilities, ranked, scores, refused, classes, ids)

    def model_facts(served: Served) -> dict[str, Any]:
        return {"run_id": served.run_id, "sha256": served.sha256, "dataset": served.dataset, "version": served.version}

    expected = token.encode() if token else None

    def check_token(given: str | None) -> None:
        if expected is not None and not hmac.compare_digest((given or "").encode(), expected):
            raise StarletteHTTPException(401, TOKEN_HELP, headers={"WWW-Authenticate": "Bearer"})

    async def bearer_token(credentials: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]) -> None:
        check_token(credentials.credentials if credentials else None)

    async def bearer_or_address_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)],
        in_address: Annotated[str | None, Security(TOKEN_IN_ADDRESS)],
    ) -> None:
        check_token(credentials.credentials if credentials else in_address)

    # On every route but health (probes have no token); with no token, nothing to check. Named on each route rather
    # than by one APIRouter: an included router is matched as a second level, for every request.
    guarded = [Depends(bearer_token)] if token else []
    LimitedRequest = Annotated[Request, Depends(body_limits(settings))]  # noqa: N806 - a type, as FastAPI writes them

    @app.exception_handler(BadInput)
    async def bad_input(_: Request, error: BadInput) -> JSONResponse:
        return JSONResponse({"error": error.message}, status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        return JSONResponse({"error": f"bad request: {first.get('msg', 'invalid')}"}, status_code=422)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(_: Request, error: ClientDisconnect) -> Response:
        # The client hung up before its body had arrived: no one to answer and nothing of ours failed. Counted as
        # 499 (nginx's "client closed request"); it was a 500 with a traceback (found by a fault battery).
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, error: Exception) -> JSONResponse:  # a bug of ours: no traceback to the client
        return JSONResponse({"error": f"internal error ({type(error).__name__})"}, status_code=500)

    @app.get("/", response_class=HTMLResponse, dependencies=[Depends(bearer_or_address_token)] if token else [])
    async def index() -> Response:
        return Response(page, media_type="text/html; charset=utf-8")

    @app.post("/predict", dependencies=guarded)
    async def predict(request: LimitedRequest) -> FastJSON:
        served = model_or_503()
        content_type = request.headers.get("content-type", "")
        media_type = content_type.split(";")[0].strip().lower()
        if media_type == "multipart/form-data":
            uploads = await uploads_from_form(request, settings.max_images)
        elif media_type == "application/json":
            uploads = uploads_from_json(await request.body(), settings.max_images)
        else:
            raise BadInput(415, f"Content-Type {content_type or 'missing'}: send multipart/form-data (image files) "
                                'or application/json ({"images": [base64, ...]})')  # fmt: skip

        pixels = count_pixels(uploads, settings.max_pixels)
        with_prepared = request.query_params.get("prepared") in ("1", "true")

        def work() -> list[dict[str, Any]]:
            images = prepare(uploads, served.dataset)
            answers = answer(served, images, "predict")
            return predictions_json(served, uploads, answers, images if with_prepared else None)

        inline = len(uploads) <= INLINE_IMAGES and pixels <= INLINE_PIXELS
        predictions = work() if inline else await run_in_threadpool(work)
        return FastJSON({"model": model_facts(served), "predictions": predictions})

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        served = follower.current
        body: dict[str, Any] = {"ready": served is not None}
        if served is not None:
            body["model"] = model_facts(served)
        if follower.problem:
            body["reason" if served is None else "warning"] = follower.problem
        return JSONResponse(body, status_code=200 if served else 503)

    def check_name(name: str) -> None:
        if name != settings.dataset:
            raise BadInput(404, f"no model {name!r} here; this server serves {settings.dataset!r}")

    @app.get("/v2/models/{name}", dependencies=guarded)
    async def model_metadata(name: str) -> dict[str, Any]:
        check_name(name)
        served = model_or_503()
        return {
            "name": name,
            "versions": [served.version],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": "images", "datatype": "UINT8", "shape": [-1, 28, 28]}],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(class_names)]},
                {"name": "class", "datatype": "INT64", "shape": [-1]},
                {"name": "not_a_digit_score", "datatype": "FP32", "shape": [-1]},
            ],
            "parameters": {
                **model_facts(served),
                # class 10 is not one of the probabilities' columns: the answer "not a digit"
                "reserved_class": {"index": REFUSED_CLASS, "name": refused_name(served.dataset)},
                "not_a_digit_threshold": served.not_a_digit.threshold if served.not_a_digit else None,
            },
        }

    @app.get("/v2/models/{name}/ready", dependencies=guarded)
    async def model_ready(name: str) -> JSONResponse:
        check_name(name)
        return await ready()

    @app.post("/v2/models/{name}/infer", dependencies=guarded)
    async def infer(name: str, request: LimitedRequest) -> Response:
        check_name(name)
        served = model_or_503()
        header_length = request.headers.get(HEADER_LENGTH)
        content_type = request.headers.get("content-type", "application/json")
        # JSON, or (binary tensor extension, announced by its header length) JSON then raw bytes
        allowed = BINARY_CONTENT_TYPES if header_length is not None else {"application/json"}
        if content_type.split(";")[0].strip() not in allowed:
            raise BadInput(415, f"Content-Type {content_type}: the v2 protocol's JSON (application/json), or with "
                                f"{HEADER_LENGTH} JSON then raw tensor bytes (application/octet-stream)")  # fmt: skip
        body = await request.body()

        def work() -> Response:
            parsed = split_v2_body(body, header_length)
            images, request_id = tensor_from_v2(parsed.document, settings.max_batch, parsed.binary[0])
            outputs = binary_outputs(parsed.document, V2_OUTPUTS)  # before the model runs
            answers = answer(served, images, "v2")
            header = {
                "model_name": name,
                "model_version": served.version,
                **({"id": request_id} if request_id else {}),
                "parameters": {"sha256": served.sha256, "run_id": served.run_id, "prediction_ids": answers.ids},
            }
            arrays = {
                "probabilities": ("FP32", answers.probabilities),
                "class": ("INT64", answers.classes),
                "not_a_digit_score": ("FP32", answers.scores),
            }
            # Compressed here: for a large batch, on the thread pool with the rest, not on the event loop.
            return compressed(v2_response(header, arrays, outputs), accepted)

        accepted = request.headers.get("accept-encoding", "")
        inline = len(body) < 64 * 1024
        return work() if inline else await run_in_threadpool(work)

    add_feedback_route(app, settings, log, metrics.feedback, guarded, LimitedRequest, announcer.poke)

    @app.get("/metrics", dependencies=guarded)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(RequestMetrics, metrics=metrics)  # type: ignore[arg-type]
    return app
