"""`mnist serve`: the champion's ONNX model behind HTTP (FastAPI + uvicorn), following every promotion.

Never imports torch: the model runs on ONNX Runtime, the images are prepared by mnist_core.data.images.
"""
