"""The server a user would write in 30 lines instead of `mnist serve`: the reference its speed is measured against
(benchmarks/serve_vs_minimal.py). No limits, no token, no image preparation beyond a plain resize, no registry:

    MINIMAL_ONNX=runs/<run>/model.onnx uvicorn benchmarks.minimal_server:app --http httptools --loop uvloop
    MINIMAL_ONNX=runs/<run>/model.onnx python benchmarks/minimal_server.py --port 8001

The model takes what mnist_core/export/runtimes.py feeds it: `images`, uint8 N x 28 x 28 (normalization is inside
the model), so this server runs the very same model.onnx as `mnist serve`, not a float32 variant.
"""

import argparse
import io
import os

import numpy as np
import onnxruntime
import uvicorn
from fastapi import FastAPI, UploadFile
from PIL import Image

options = onnxruntime.SessionOptions()
options.intra_op_num_threads = 1  # as `mnist serve` does: one request's 28x28 image gains nothing from more threads
options.inter_op_num_threads = 1
session = onnxruntime.InferenceSession(os.environ["MINIMAL_ONNX"], options, providers=["CPUExecutionProvider"])
app = FastAPI()


@app.post("/predict")
async def predict(file: UploadFile) -> dict[str, int]:
    image = Image.open(io.BytesIO(await file.read())).convert("L").resize((28, 28))
    logits = session.run(None, {"images": np.asarray(image, dtype=np.uint8)[None]})[0]
    return {"class": int(logits[0].argmax())}


@app.get("/health")
async def health() -> dict[str, str]:  # for the benchmark's wait-until-up, not part of the 30 lines' point
    return {"status": "ok"}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8001)
    # One worker, httptools and uvloop: the fastest plain uvicorn, the same stack `mnist serve` runs on.
    uvicorn.run(app, host="127.0.0.1", port=parser.parse_args().port, http="httptools", loop="uvloop", workers=1)
