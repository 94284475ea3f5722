"""Retraining only when something changed: the data, the parameters or the code (the run's fingerprint)."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnist_core import fingerprint as fingerprint_module
from mnist_core.config import RunParams
from mnist_core.records import RunResult, Unchanged
from mnist_core.registry.store import read_champion, read_registry
from tests.support import PROJECT_ROOT

pytestmark = pytest.mark.slow


def run_folders(output_dir: Path) -> list[Path]:
    return sorted(path for path in output_dir.iterdir() if path.is_dir() and not path.name.startswith("."))


@pytest.fixture(scope="module")
def first_run(trained_run, mnist_data_dir: Path, mnist_mirror: Path):
    """The session's 1-epoch run (its parameters as conftest's `trained_run` passes them), read only: each test
    works on a copy of its output root."""
    first, _, output_dir = trained_run
    params = RunParams(epochs=1, data_dir=mnist_data_dir, output_dir=output_dir, mirror=[str(mnist_mirror)])
    assert isinstance(first, RunResult) and first.promotion.promoted
    return params, first


@pytest.fixture
def trained_once(first_run, tmp_path: Path) -> tuple[RunParams, RunResult]:
    """An output root whose champion is a 1-epoch run: a copy of the module's, so each test changes its own (the
    copied champion pointer still names the first run's folder, which the tests only read)."""
    params, first = first_run
    shutil.copytree(params.output_dir, tmp_path / "runs")
    return params.model_copy(update={"output_dir": tmp_path / "runs"}), first


def test_a_run_that_stops_as_unchanged_never_imports_torch(trained_once, prefect_server: str) -> None:
    """The Unchanged path (preflight, download, the cached transform, the fingerprint) needs no torch (~1-2 s of
    every such run, issue 31), nor pandas or matplotlib (~0.3 s): the flow run in a fresh process, against the
    session's server (its registry read and the outliers' cache checked as in any run). The data folder is the
    one the session's run was made in (its outlier images are cached there; made here, they would import torch)."""
    params, first = trained_once
    params = params.model_copy(update={"data_dir": Path(first.exported.card.params["data_dir"])})
    code = (
        "import json, sys; from flows.mnist import mnist; from mnist_core.config import RunParams; "
        f"state = mnist(RunParams.model_validate(json.loads({params.model_dump_json()!r})), return_state=True); "
        "assert state.name == 'Unchanged', state; "
        "heavy = {'torch', 'pandas', 'matplotlib'} & set(sys.modules); assert not heavy, f'imported: {heavy}'"
    )
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    ran = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-2000:]


def test_a_second_identical_run_stops_before_training(trained_once) -> None:
    from flows.mnist import mnist

    params, first = trained_once
    started = time.monotonic()
    state = mnist(params, return_state=True)
    seconds = time.monotonic() - started
    unchanged = state.result()
    assert state.is_completed() and state.name == "Unchanged"
    assert isinstance(unchanged, Unchanged) and unchanged.champion_run_id == first.exported.run_id
    assert f"nothing changed since run {first.exported.run_id}" in state.message
    assert unchanged.fingerprint == first.exported.card.fingerprint
    assert [path.name for path in run_folders(params.output_dir)] == [first.exported.run_id]  # no new run folder
    assert len(read_registry(params.output_dir)) == 1
    print(f"\nunchanged run: {seconds:.1f} s")
    assert seconds < 30  # the first run's download and transform are cached; training would add more


def test_force_retrain_trains_anyway(trained_once) -> None:
    from flows.mnist import mnist

    params, first = trained_once
    again = mnist(params.model_copy(update={"force_retrain": True}))
    assert isinstance(again, RunResult) and again.exported.run_id != first.exported.run_id
    assert again.exported.card.fingerprint == first.exported.card.fingerprint
    assert again.promotion.kind == "kept"  # the same model again: a tie keeps the champion


def test_another_parameter_trains(trained_once) -> None:
    from flows.mnist import mnist

    params, first = trained_once
    again = mnist(params.model_copy(update={"seed": 1}))
    assert isinstance(again, RunResult) and again.exported.card.fingerprint != first.exported.card.fingerprint


def test_changed_code_trains(trained_once, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.mnist import mnist

    params, first = trained_once
    code = tmp_path / "mnist_core"
    shutil.copytree(fingerprint_module.CODE_ROOT, code, ignore=shutil.ignore_patterns("__pycache__"))
    assert fingerprint_module.code_digest(code) == first.exported.card.code_digest
    monkeypatch.setattr(fingerprint_module, "CODE_ROOT", code)
    for cosmetic in ("inference/predict.py", "export/run_folder.py", "evaluation/plots.py"):
        with (code / cosmetic).open("a") as source:
            source.write("\n# help text, report wording, a plot's colour\n")
    assert isinstance(mnist(params), Unchanged)  # nothing that trains changed
    with (code / "training" / "steps.py").open("a") as source:
        source.write("\n# a change to the code that trains\n")
    again = mnist(params)
    assert isinstance(again, RunResult)
    assert again.exported.card.code_digest == fingerprint_module.code_digest(code) != first.exported.card.code_digest
    # The same model again: the tie keeps the champion. That retrain was judged, so the next one with the same
    # code does not repeat it.
    assert again.promotion.kind == "kept"
    champion = read_champion(params.output_dir, "mnist")
    assert champion is not None and champion.fingerprint == first.exported.card.fingerprint
    third = mnist(params)
    assert isinstance(third, Unchanged) and third.champion_run_id == again.exported.run_id
    assert read_registry(params.output_dir)["fingerprint"].tolist() == [
        first.exported.card.fingerprint, again.exported.card.fingerprint,
    ]  # fmt: skip


def test_labelled_low_confidence_images_make_the_next_run_train_on_them(
    trained_once, mnist_tensors, tmp_path: Path
) -> None:
    """The loop a user closes: `mnist predict --threshold` lists the unsure inputs, the user files them under their
    true class in the extra_data folder, and the next run trains on them (and not again until the folder changes)."""
    from flows.mnist import mnist
    from mnist_core.inference.predict import PredictParams, predict
    from tests.support.photos import write_photos

    params, first = trained_once
    count = 120
    digits, labels = mnist_tensors["train_images"][:count].numpy(), mnist_tensors["train_labels"][:count].numpy()
    inbox = tmp_path / "inbox"
    photos = write_photos(digits, inbox, seed=1)
    batch = predict(PredictParams(inputs=[str(inbox)], output_dir=params.output_dir, threshold=0.9))
    unsure = [Path(row.input) for row in batch.for_review]
    assert 3 <= len(unsure) < count, len(unsure)
    extra = tmp_path / "my-digits"
    for photo in unsure:  # the user labels them: the true class, from the file's position
        label = int(labels[photos.index(photo)])
        (extra / str(label)).mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, extra / str(label) / photo.name)

    with_extra = params.model_copy(update={"extra_data": extra})
    second = mnist(with_extra)
    assert isinstance(second, RunResult)
    card = second.exported.card
    assert len(card.dataset.extra_manifest) == len(unsure) and card.dataset.extra_sha256
    assert card.dataset.sizes["extra_test"] >= 1 and card.metrics.extra_test_accuracy is not None
    assert card.fingerprint != first.exported.card.fingerprint
    report = second.exported.report.read_text()
    assert "the extra images' test part" in report and f"{card.metrics.extra_test_accuracy:.2%}" in report
    row = read_registry(params.output_dir).iloc[-1]
    assert row["extra_data_sha256"] == card.dataset.extra_sha256 and row["extra_test_accuracy"] >= 0
    assert "pooled" in row["reason"]  # decided by the default promotion_metric, combined

    assert isinstance(mnist(with_extra), Unchanged)  # the same folder: nothing to learn
    write_photos(digits[:1], extra / str(int(labels[0])), seed=7)  # one more labelled image
    assert isinstance(mnist(with_extra), RunResult)


@pytest.mark.parametrize("change", ["in place", "replaced"])
def test_a_cached_file_is_hashed_again_whenever_it_may_have_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """An unchanged run trusts a cached IDX file checked before (its size, times and inode recorded beside it) without
    hashing it again; a file written or replaced since is hashed again, found wrong and fetched again."""
    import gzip
    import hashlib
    import os

    from mnist_core.data import download

    content = bytes(range(256)) * 40
    mirror, cache = tmp_path / "mirror", tmp_path / "cache"
    mirror.mkdir()
    (mirror / "f.gz").write_bytes(gzip.compress(content))
    sha256 = hashlib.sha256(content).hexdigest()
    path, source = download.fetch_verified("f.gz", sha256, cache, [str(mirror)])
    assert source != "cache" and not download.verified_before(path, sha256)  # just written: too recent to record
    monkeypatch.setattr(download, "RACY_SECONDS", 0.0)
    assert download.fetch_verified("f.gz", sha256, cache, [str(mirror)]) == (path, "cache")  # hashed, recorded
    hashed: list[Path] = []
    real_sha256 = download.decompressed_sha256
    monkeypatch.setattr(download, "decompressed_sha256", lambda *args: hashed.append(args[0]) or real_sha256(*args))
    assert download.fetch_verified("f.gz", sha256, cache, [str(mirror)]) == (path, "cache") and not hashed
    assert not download.verified_before(path, "0" * 64)  # a record of another digest says nothing
    wrong = gzip.compress(bytes(255 - b for b in content))  # the same size
    time.sleep(0.05)  # past the kernel's timestamp tick: the test's RACY_SECONDS of 0 turned that guard off
    if change == "in place":
        with path.open("r+b") as stream:
            stream.write(wrong[: path.stat().st_size])
    else:
        (tmp_path / "other.gz").write_bytes(wrong)
        os.replace(tmp_path / "other.gz", path)
    assert download.fetch_verified("f.gz", sha256, cache, [str(mirror)])[1] != "cache" and hashed
    assert path.read_bytes() == (mirror / "f.gz").read_bytes()
