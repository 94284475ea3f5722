"""The binary tensor data extension of the Open Inference Protocol v2 (KServe), as NVIDIA's `tritonclient` speaks it
by default (`InferInput.set_data_from_numpy(x)`): the body is a JSON header, then the raw bytes of each input that
says `"parameters": {"binary_data_size": N}` (in the order of `inputs`); the header's length is the HTTP header
`Inference-Header-Content-Length`. Outputs asked for as binary (`"binary_data": true` on an output, as tritonclient
writes it, `"binary_data_output": true` there or on the request) come back the same way.

Only slicing and lengths here: the tensor itself is checked by `tensor_from_v2` (inputs.py), as a JSON one is, so the
two encodings refuse the same shapes, datatypes and batch sizes."""

from dataclasses import dataclass

import numpy as np
import orjson
from fastapi.responses import Response

from mnist_core.serving.inputs import BadInput, parse_json

HEADER_LENGTH = "Inference-Header-Content-Length"
# What a v2 body may be sent as: JSON alone, or (with the header length) JSON then raw bytes, which some clients
# label as octet-stream. tritonclient sends no Content-Type at all, which the route reads as JSON.
BINARY_CONTENT_TYPES = {"application/json", "application/octet-stream"}


@dataclass(frozen=True)
class V2Request:
    document: dict
    binary: list[bytes | None]  # per input, in the order of `inputs`: its raw bytes, or None where it sent `data`


def split_v2_body(body: bytes, header_length: str | None) -> V2Request:
    """The JSON header and each input's raw bytes; 400 with one line when the lengths do not agree."""
    if header_length is None:
        try:
            document, rest = parse_json(body), b""
        except BadInput as error:  # likely a binary body whose client left the header length out: say so
            raise BadInput(400, f"{error.message}; JSON then raw tensor bytes need {HEADER_LENGTH}") from None
    else:
        text = header_length.strip()
        if not text.isdigit():  # no sign, no spaces inside: a length, or nothing to trust the body's split on
            raise BadInput(400, f"{HEADER_LENGTH} is {header_length[:40]!r}, not a number of bytes")
        length = int(text)
        if length > len(body):
            raise BadInput(400, f"{HEADER_LENGTH} is {length} but the body holds only {len(body)} bytes")
        try:
            document = parse_json(body[:length])
        except BadInput as error:
            raise BadInput(400, f"the JSON header (its first {length} bytes): {error.message}") from None
        rest = body[length:]
    inputs = document.get("inputs") if isinstance(document, dict) else None
    if not isinstance(document, dict) or not isinstance(inputs, list) or not inputs:  # [] once answered 500
        raise BadInput(400, 'expected {"inputs": [{"name", "shape": [N, 28, 28], "datatype": "UINT8", "data"}]}')
    binary: list[bytes | None] = []
    offset = 0
    for index, tensor in enumerate(inputs):
        parameters = tensor.get("parameters") if isinstance(tensor, dict) else None
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if size is None:
            binary.append(None)
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadInput(400, f"inputs[{index}].parameters.binary_data_size is {size!r}, not a number of bytes")
        if "data" in tensor:
            raise BadInput(400, f"inputs[{index}] has both data and binary_data_size: send one")
        binary.append(rest[offset : offset + size])
        offset += size
    if offset != len(rest):
        sent = f"{len(rest)} bytes after the JSON header" if header_length is not None else f"no {HEADER_LENGTH}"
        raise BadInput(400, f"the inputs' binary_data_size add up to {offset} bytes but the body has {sent}")
    return V2Request(document, binary)


def binary_outputs(document: dict, names: list[str]) -> list[tuple[str, bool]]:
    """The outputs to answer with, in order, and whether each goes as binary. No `outputs` in the request: all of
    the model's, binary if the request says `"binary_data_output": true`. Named outputs: those only, each binary
    if its own parameters say so (`binary_data`, as tritonclient writes it, or `binary_data_output`), else as the
    request says; as Triton does, an output's own parameter wins."""
    parameters = document.get("parameters")
    default = isinstance(parameters, dict) and parameters.get("binary_data_output") is True
    requested = document.get("outputs")
    if requested is None:
        return [(name, default) for name in names]
    if not isinstance(requested, list) or not requested:
        raise BadInput(400, f"outputs must be a list of {{'name': ...}} naming some of {names}")
    chosen = []
    for index, output in enumerate(requested):
        name = output.get("name") if isinstance(output, dict) else None
        if name not in names:
            raise BadInput(400, f"outputs[{index}] names {name!r}; this model's outputs are {names}")
        own = output.get("parameters") or {}
        if not isinstance(own, dict):
            raise BadInput(400, f"outputs[{index}].parameters must be an object")
        if {"classification", "shared_memory_region"} & own.keys():  # rather than an answer that ignored them
            raise BadInput(400, f"outputs[{index}]: classification and shared-memory outputs are not supported here")
        flag = own.get("binary_data", own.get("binary_data_output"))
        chosen.append((name, default if flag is None else flag is True))
    return chosen


V2_NUMPY = {"FP32": np.dtype("<f4"), "INT64": np.dtype("<i8")}  # the protocol's types, little-endian on the wire


def v2_response(header: dict, arrays: dict[str, tuple[str, np.ndarray]], outputs: list[tuple[str, bool]]) -> Response:
    """The v2 answer: each output's `data` in the JSON, or (binary) its little-endian bytes after the JSON header,
    its size in `parameters.binary_data_size` and the header's length in Inference-Header-Content-Length. All in
    JSON: a plain JSON answer, as before the extension."""
    described, blobs = [], []
    for name, binary in outputs:
        datatype, array = arrays[name]
        array = array.astype(V2_NUMPY[datatype], copy=False)
        tensor = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            blob = array.tobytes()
            blobs.append(blob)
            tensor["parameters"] = {"binary_data_size": len(blob)}
        else:
            tensor["data"] = array.ravel()
        described.append(tensor)
    text = orjson.dumps({**header, "outputs": described}, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return Response(text, media_type="application/json")
    return Response(
        b"".join([text, *blobs]), media_type="application/octet-stream", headers={HEADER_LENGTH: str(len(text))}
    )
