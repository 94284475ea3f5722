"""What a client sends, turned into MNIST-form images or a clear refusal. Nothing here reaches a shell, a path on
disk or an unpickler: images are decoded from bytes by mnist_core.data.images (the same preparation as `mnist
predict`), multipart bodies parsed by Starlette with python-multipart (an upload over 1 MiB is spooled to an
anonymous temporary file, as Starlette does), JSON by orjson, v2 tensors by numpy from lists."""

import base64
import binascii
import io
from dataclasses import dataclass
from pathlib import PurePath

import numpy as np
import orjson
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from mnist_core.data.idx import IMAGE_SIDE
from mnist_core.data.images import PILLOW_FORMATS, WORK_SIDE, decode_reduced, load_image, over_limit
from mnist_core.inference.predict import printable

MAX_FIELD_BYTES = 64 * 1024  # a plain (non-file) form field: never an image, so never large


class BadInput(Exception):
    """A client's mistake: answered with `status` and this message, never a 500."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Upload:
    name: str  # for the answer only: never used as a path
    content: bytes


def _label(filename: str | None, index: int) -> str:
    """A client's file name, as a label: its last part, printable, short."""
    name = printable(PurePath(filename.replace("\\", "/")).name if filename else "")[:100]
    return name or f"image {index + 1}"


async def uploads_from_form(request: Request, max_images: int) -> list[Upload]:
    """The file fields of a multipart/form-data body (RFC 7578), parsed by Starlette with python-multipart as it
    arrives, at most `max_images` files and as many plain fields (which are not images, and skipped)."""
    try:
        async with request.form(max_files=max_images, max_fields=max_images, max_part_size=MAX_FIELD_BYTES) as form:
            files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
            uploads = [Upload(_label(file.filename, index), await file.read()) for index, file in enumerate(files)]
    except HTTPException as error:  # Starlette's refusal of a multipart body: its message is all it says
        detail = str(error.detail)
        if detail.startswith("Too many files"):
            raise BadInput(413, f"too many images in one request: the limit is {max_images}") from None
        if "maximum" in detail.lower():  # its other limits: too many plain fields, or one too large
            raise BadInput(413, f"multipart body over this server's limits: {detail}") from None
        raise BadInput(400, f"malformed multipart body ({detail})") from None
    if not uploads:
        raise BadInput(400, "no image file in the multipart body (send each image as a file field)")
    return uploads


def uploads_from_json(body: bytes, max_images: int) -> list[Upload]:
    """`{"images": ["<base64 of an image file, or a data: URL>", ...]}`."""
    document = parse_json(body)
    images = document.get("images") if isinstance(document, dict) else None
    if not isinstance(images, list) or not images or not all(isinstance(item, str) for item in images):
        raise BadInput(422, 'expected {"images": ["<base64 image file>", ...]} with at least one image')
    if len(images) > max_images:
        raise BadInput(413, f"too many images in one request ({len(images)}): the limit is {max_images}")
    uploads = []
    for index, text in enumerate(images):
        try:
            content = base64.b64decode(text.split(",", 1)[1] if text.startswith("data:") else text, validate=True)
        except (binascii.Error, ValueError, IndexError):
            raise BadInput(422, f"images[{index}] is not base64") from None
        uploads.append(Upload(f"images[{index}]", content))
    return uploads


def parse_json(body: bytes) -> object:
    """orjson (a Prefect dependency): a v2 tensor of 256 images is 200,000 numbers, parsed ~5x faster than by json;
    it refuses nesting deeper than 1024 rather than recursing."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise BadInput(400, f"malformed JSON ({str(error)[:200]})") from None


def count_pixels(uploads: list[Upload], max_pixels: int) -> int:
    """The pixels the uploads would decode to, read from their headers before anything is decoded; refused over
    `max_pixels` per image or in all: a small request (a PNG of one colour compresses a thousandfold) must not make
    the server decode hundreds of megapixels."""
    total = 0
    for upload in uploads:
        try:
            with Image.open(io.BytesIO(upload.content), formats=PILLOW_FORMATS) as image:
                size = image.size
                # The most load_image may decode: a JPEG at the reduced scale the preparation takes whole (a
                # 12-megapixel phone photo at 1/2, 3 megapixels: its small digits are read from that), any other
                # format at its full size.
                decode_reduced(image, WORK_SIDE)
                width, height = image.size
        except Image.DecompressionBombError as error:
            raise BadInput(422, f"{upload.name}: refused as a decompression bomb ({error})") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            continue  # load_image names what is wrong with it
        refusal = over_limit(size, (width, height), max_pixels, "this server's")
        if refusal:
            raise BadInput(422, f"{upload.name}: {refusal} (a decompression bomb, or a photo to scale down first)")
        total += width * height
        if total > max_pixels:
            raise BadInput(413, f"the images of this request hold over {max_pixels} pixels in all; send fewer or "
                                "smaller ones")  # fmt: skip
    return total


def prepare(uploads: list[Upload], dataset: str) -> np.ndarray:
    """The uploads in MNIST form (N x 28 x 28 uint8) through `load_image`, as `mnist predict` prepares files; the
    first bad one refuses the request with its reason. Check their size first (`count_pixels`)."""
    images = []
    for upload in uploads:
        loaded = load_image(PurePath(upload.name), upload.content, dataset)  # type: ignore[arg-type]
        if loaded.image is None:
            raise BadInput(422, loaded.error or f"{upload.name}: unreadable")
        images.append(loaded.image)
    return np.stack(images)


V2_DTYPE = "UINT8"


def tensor_from_v2(document: object, max_batch: int, binary: bytes | None = None) -> tuple[np.ndarray, str | None]:
    """The Open Inference Protocol v2 request's one input: UINT8 [N, 28, 28] (data flat or nested), or its raw
    bytes (`binary`, sliced from the body by v2_binary.split_v2_body) checked against the same shape and limits."""
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list) or len(document["inputs"]) != 1:
        raise BadInput(400, 'expected {"inputs": [{"name", "shape": [N, 28, 28], "datatype": "UINT8", "data"}]}')
    tensor = document["inputs"][0]
    if not isinstance(tensor, dict):
        raise BadInput(400, "inputs[0] must be an object")
    shape, datatype, data = tensor.get("shape"), tensor.get("datatype"), tensor.get("data")
    if datatype != V2_DTYPE:
        raise BadInput(400, f"inputs[0].datatype is {datatype!r}; this model takes {V2_DTYPE}")
    if (
        not isinstance(shape, list)
        or len(shape) != 3
        or not all(isinstance(side, int) and not isinstance(side, bool) for side in shape)
        or shape[1:] != [IMAGE_SIDE, IMAGE_SIDE]
        or shape[0] < 1
    ):
        raise BadInput(400, f"inputs[0].shape is {shape!r}; this model takes [N, {IMAGE_SIDE}, {IMAGE_SIDE}], N >= 1")
    if shape[0] > max_batch:
        raise BadInput(413, f"too many images in one request ({shape[0]}): the limit is {max_batch}")
    given_id = document.get("id")
    request_id = given_id if isinstance(given_id, str) else None
    if binary is not None:
        expected = shape[0] * IMAGE_SIDE * IMAGE_SIDE  # UINT8: one byte an element, every byte value a valid one
        if len(binary) != expected:
            raise BadInput(400, f"inputs[0].parameters.binary_data_size is {len(binary)} but shape {shape} of "
                                f"{V2_DTYPE} is {expected} bytes")  # fmt: skip
        return np.frombuffer(binary, np.uint8).reshape(shape), request_id
    if not isinstance(data, list):
        raise BadInput(400, "inputs[0].data must be a list of numbers")
    try:
        array = np.asarray(data)
    except (ValueError, TypeError):
        raise BadInput(400, "inputs[0].data is ragged or not numbers") from None
    if array.dtype.kind not in "iu" or array.size != shape[0] * IMAGE_SIDE * IMAGE_SIDE:
        raise BadInput(400, f"inputs[0].data must hold {shape[0] * IMAGE_SIDE * IMAGE_SIDE} integers (the shape's "
                            f"product), got {array.size} of kind {array.dtype}")  # fmt: skip
    if array.min() < 0 or array.max() > 255:
        raise BadInput(400, "inputs[0].data has values outside 0-255 (UINT8)")
    return array.astype(np.uint8).reshape(shape), request_id
