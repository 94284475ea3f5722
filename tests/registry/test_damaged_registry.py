"""`python flows/mnist.py` on an output folder whose registry.csv or champion pointer (not yet imported into the
registry's database) was cut at a random byte: the run stops before it trains, in seconds, with one line naming
the file and the repair, and changes nothing (no database is created from damaged files)."""

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnist_core.layout import REGISTRY_FILE
from tests.support import PROJECT_ROOT
from tests.support.records import legacy_files
from tests.support.synthetic import snapshot

pytestmark = pytest.mark.slow


def _registry_of_three_runs(root: Path) -> None:
    """The files the registry had before its database, which a run imports in its preflight."""
    legacy_files(root.parent / "source", root, [("r1", 0.90), ("r2", 0.93), ("r3", 0.92)])


def _cut_inside_a_line(path: Path, seed: int) -> int:
    """Cut `path` at a random byte that is not a line end (a cut there leaves a shorter, valid file), nor just
    before the last one (a pointer's JSON is whole without its final line break)."""
    data = path.read_bytes()
    rng = random.Random(seed)
    while True:
        cut = rng.randrange(1, len(data) - 1)
        if data[cut - 1 : cut] != b"\n":
            path.write_bytes(data[:cut])
            return cut


@pytest.mark.parametrize(("damaged", "message"), [
    (REGISTRY_FILE, "damaged registry"),
    ("champion-mnist.json", "damaged champion pointer"),
])  # fmt: skip
def test_a_run_on_a_damaged_registry_stops_before_training(
    damaged: str, message: str, tmp_path: Path, mnist_data_dir: Path, mnist_mirror: Path
) -> None:
    output = tmp_path / "runs"
    _registry_of_three_runs(output)
    cut = _cut_inside_a_line(output / damaged, seed=len(damaged))
    before = snapshot(output)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    command = [sys.executable, str(PROJECT_ROOT / "flows" / "mnist.py"), "--data-dir", str(mnist_data_dir),
               "--mirror", str(mnist_mirror), "--output-dir", str(output), "--epochs", "1"]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - started
    print(f"\n{damaged} cut at byte {cut}: exit {done.returncode} after {seconds:.1f} s")
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"mnist: error: {output.resolve() / damaged}: {message}"), line
    assert "restore it from a backup" in line and "Traceback" not in done.stdout + done.stderr
    assert "starting a Prefect server" not in done.stdout, "the registry is checked before anything starts"
    assert seconds < 30  # the interpreter and its imports; no server, no training
    assert snapshot(output) == before, "a damaged registry must be left as it was found"
    assert not [path for path in output.iterdir() if path.is_dir()], "no checkpoint or run folder: nothing started"
