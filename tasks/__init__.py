"""Thin Prefect tasks around `mnist_core`, one per stage; beside them, the sweep's trial starter (trials.py) and a
stop raised again at an epoch's end (stops.py)."""

from tasks.corrections import gather
from tasks.download import download
from tasks.evaluate import evaluate
from tasks.export import export
from tasks.fingerprint import fingerprint
from tasks.promote import promote
from tasks.train import train
from tasks.transform import transform

__all__ = ["gather", "download", "transform", "fingerprint", "train", "evaluate", "export", "promote"]
