"""The machine a figure was measured on, as `lscpu` names its CPU (platform.processor() is empty on Linux)."""

import platform
import subprocess


def cpu_model() -> str:
    listing = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    found = (line.split(":", 1)[1].strip() for line in listing if line.startswith("Model name"))
    return next(found, platform.processor() or platform.machine())
