"""The model a server answers with, and following the champion: a background thread polls the registry's
`read_champion` (through `choose_model`) about once a second; a new champion is loaded, checked against its model
card, run once, and only then swapped in by one reference assignment, so a request that took the old model finishes
on it. A candidate that fails any step is refused: the old model keeps serving and the reason is kept for
`/v2/health/ready` and `/metrics`, logged once per candidate."""

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_core.data.idx import IMAGE_SIDE, NUM_CLASSES
from mnist_core.errors import PipelineError
from mnist_core.export.runtimes import Predictor, load_predictor
from mnist_core.inference.predict import ChosenModel, choose_model
from mnist_core.records import NotADigitRule

LOG = logging.getLogger("mnist.serve")


@dataclass(frozen=True)
class Served:
    """One loaded model; immutable, so a request holding it sees one model from start to end."""

    predictor: Predictor
    run_id: str | None
    dataset: str
    class_names: list[str]
    loaded_at: float  # time.time()
    temperature: float = 1.0  # calibration from the model card: probabilities are softmax(logits / T)
    not_a_digit: NotADigitRule | None = None  # from the model card: when to answer "not a digit" (None: never)

    @property
    def sha256(self) -> str:
        return self.predictor.sha256

    @property
    def version(self) -> str:
        """The v2 protocol's model version: the run id, or the file's hash for a model outside any run folder."""
        return self.run_id or self.sha256[:16]


def _candidate_key(chosen: ChosenModel) -> tuple[str, int, int, int]:
    """What identifies a candidate: its file and that file's identity, so a file replaced in place is a new one, and
    a refused candidate is tried (and logged) again only when something about it changed."""
    try:
        stat = chosen.path.stat()
        return str(chosen.path), stat.st_ino, stat.st_mtime_ns, stat.st_size
    except OSError:
        return str(chosen.path), 0, 0, -1


class ModelFollower:
    """Holds the served model (`current`) and replaces it when the model `spec` names changes. `spec` is what
    `mnist predict --model` takes: 'champion' follows the dataset's champion, a run or a file is served as is (and
    reloaded if its file changes)."""

    def __init__(self, spec: str, output_dir: Path, dataset: str, poll_seconds: float = 1.0) -> None:
        self.spec, self.output_dir, self.dataset, self.poll_seconds = spec, Path(output_dir), dataset, poll_seconds
        self.current: Served | None = None
        self.problem: str | None = "not checked yet"  # why not ready, or why the latest candidate was refused
        self.swaps = 0
        self.failed_swaps = 0
        self._key: tuple | None = None  # the served candidate's
        self._refused: tuple | None = None  # the last refused candidate's (or problem's)
        self._lock = threading.Lock()  # one check at a time (the thread, and a check forced by a test or startup)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        return self.current is not None

    def check(self) -> None:
        """One poll: swap in a new model if there is one and it passes every check. Never raises."""
        with self._lock:
            try:
                self._check()
            except Exception as error:  # noqa: BLE001 - the poller must survive anything; said once, kept serving
                self._refuse(("unexpected", repr(error)), f"unexpected error while checking the model: {error!r}")

    def _check(self) -> None:
        try:
            chosen = choose_model(self.spec, self.output_dir, self.dataset, "onnx")
        except PipelineError as error:  # no champion yet, a damaged pointer, a missing run folder or file
            self._refuse(("choose", str(error)), str(error))
            return
        key = _candidate_key(chosen)
        if key == self._key:  # still (or again, after a refused candidate was rolled back) the model served
            self._refused = self.problem = None
            return
        if key == self._refused:
            return
        try:
            if chosen.dataset != self.dataset:
                raise PipelineError(f"{chosen.path}: a {chosen.dataset} model, but this server serves {self.dataset}")
            predictor = load_predictor(chosen.path, onnx_threads=1)  # checks the SHA-256 against its model card
            logits = predictor.logits(np.zeros((1, IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8))  # runs it once
            if logits.shape != (1, NUM_CLASSES) or not np.isfinite(logits).all():
                raise PipelineError(f"{chosen.path}: a trial prediction gave {logits.shape} / non-finite logits")
        except Exception as error:  # noqa: BLE001 - any failure of a candidate keeps the old model serving
            self._refuse(key, f"model {chosen.run_id or chosen.path} not swapped in: {error}")
            return
        previous = self.current
        # The swap: one reference assignment. Requests that already took `previous` keep it until they finish.
        self.current = Served(
            predictor,
            chosen.run_id,
            chosen.dataset,
            chosen.class_names,
            time.time(),
            chosen.temperature,
            chosen.not_a_digit,
        )
        self._key, self._refused, self.problem = key, None, None
        self.swaps += 1
        before = f" (was {previous.version})" if previous else ""
        LOG.warning("mnist serve: now serving %s%s, SHA-256 %s", self.current.version, before, predictor.sha256[:16])

    def _refuse(self, key: tuple, problem: str) -> None:
        if key == self._refused:
            return  # the same problem as at the last poll: already logged and counted
        self._refused, self.problem = key, problem
        if self.current is not None or key[0] != "choose":  # "no champion yet" at start is no failed swap
            self.failed_swaps += 1
        LOG.warning("mnist serve: %s%s", problem, "; still serving " + self.current.version if self.current else "")

    def start(self) -> None:
        self.check()
        self._thread = threading.Thread(target=self._run, name="mnist-serve-follower", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.check()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
