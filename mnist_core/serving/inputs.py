"""What a client sends, turned into MNIST-form images or a clear refusal. Nothing here touches the disk, a shell or
an unpickler: images are decoded from bytes by mnist_core.data.images (the same preparation as `mnist predict`),
multipart bodies split on their boundary, JSON by orjson, v2 tensors by numpy from lists."""

import base64
import binascii
import io
import re
from dataclasses import dataclass
from pathlib import PurePath

import numpy as np
import orjson
from PIL import Image, UnidentifiedImageError

from mnist_core.data.idx import IMAGE_SIDE
from mnist_core.data.images import PILLOW_FORMATS, load_image
from mnist_core.inference.predict import printable


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


BOUNDARY = re.compile(r'boundary=(?:"([^"]{1,200})"|([^\s;]{1,200}))', re.IGNORECASE)
DISPOSITION_PARAM = re.compile(rb'(name|filename)="([^"]*)"', re.IGNORECASE)


def uploads_from_multipart(body: bytes, content_type: str, max_images: int) -> list[Upload]:
    """The file fields of a multipart/form-data body (RFC 7578). Parsed here, with a split on the boundary: the
    standard library's MIME parser took milliseconds per request, and python-multipart is not a dependency."""
    match = BOUNDARY.search(content_type)
    if match is None:
        raise BadInput(400, "multipart body without a boundary in its Content-Type")
    delimiter = b"--" + (match.group(1) or match.group(2)).encode("latin-1", "replace")
    sections = body.split(delimiter)
    if len(sections) < 3 or not sections[-1].startswith(b"--"):
        raise BadInput(400, "malformed multipart body (no closing boundary)")
    uploads = []
    for section in sections[1:-1]:  # the first is the preamble, the last the closing "--" and epilogue
        if not section.startswith(b"\r\n") or not section.endswith(b"\r\n"):
            raise BadInput(400, "malformed multipart body (a part not framed by CRLF)")
        head, separator, content = section[2:-2].partition(b"\r\n\r\n")
        if not separator:
            head, content = section[2:-2].removesuffix(b"\r\n"), b""  # a part with headers only
        disposition = next((line for line in head.split(b"\r\n") if line.lower().startswith(b"content-disposition:")),
                           b"")  # fmt: skip
        params = {key.lower(): value for key, value in DISPOSITION_PARAM.findall(disposition)}
        if b"filename" not in params:
            continue  # plain form fields are not images
        uploads.append(Upload(_label(params[b"filename"].decode("utf-8", "replace"), len(uploads)), content))
        if len(uploads) > max_images:
            raise BadInput(413, f"too many images in one request: the limit is {max_images}")
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
                width, height = image.size
        except Image.DecompressionBombError as error:
            raise BadInput(422, f"{upload.name}: refused as a decompression bomb ({error})") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            continue  # load_image names what is wrong with it
        if width * height > max_pixels:
            raise BadInput(422, f"{upload.name}: {width}x{height} px is over this server's limit of {max_pixels} "
                                "pixels (a decompression bomb, or a photo to scale down first)")  # fmt: skip
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


def tensor_from_v2(document: object, max_batch: int) -> tuple[np.ndarray, str | None]:
    """The Open Inference Protocol v2 request's one input: UINT8 [N, 28, 28] (data flat or nested)."""
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
    request_id = document.get("id")
    return array.astype(np.uint8).reshape(shape), request_id if isinstance(request_id, str) else None
