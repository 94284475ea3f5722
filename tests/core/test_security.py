"""Security: nothing is unpickled, nothing is written outside its folder, no secret is logged or published."""

import ast
import gzip
import hashlib
import io
import logging
import pickle
from pathlib import Path

import pytest
import torch

from mnist_core.config import RunParams
from mnist_core.data.download import fetch_verified
from mnist_core.errors import DataError, DownloadError, TrainingError
from mnist_core.export.run_folder import build_model_card
from mnist_core.records import DatasetFile, Downloaded, Prepared, Trained
from mnist_core.redact import redact_url
from mnist_core.training.checkpoint import checkpoint_dir, load_checkpoint
from mnist_core.training.model import MLP, load_weights, save_weights
from tests.support import PROJECT_ROOT, synthetic
from tests.support.records import make_evaluation, make_history

SOURCE_DIRS = ("mnist_core", "tasks", "flows", "deployments")
UNPICKLERS = ("pickle", "dill", "joblib", "cloudpickle", "shelve")


class _Payload:
    """Unpickling this runs code: it writes `marker`. A safe loader must refuse before that happens."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran during loading"))


def _malicious_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    marker = tmp_path / "pwned"
    as_checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"format": 1, "model": _Payload(marker)}, as_checkpoint)
    as_pickle = tmp_path / "model.safetensors"
    as_pickle.write_bytes(pickle.dumps({"weights": _Payload(marker)}))
    return marker, as_checkpoint, as_pickle


def test_the_payload_really_is_malicious(tmp_path: Path) -> None:
    """Guards the tests below: an unsafe load of these files does run code."""
    marker, as_checkpoint, as_pickle = _malicious_files(tmp_path)
    torch.load(as_checkpoint, weights_only=False)
    assert marker.read_text() == "code ran during loading"
    marker.unlink()
    pickle.loads(as_pickle.read_bytes())  # noqa: S301 - deliberately unsafe, to prove the payload works
    assert marker.exists()


def test_malicious_checkpoint_is_refused(tmp_path: Path) -> None:
    marker, as_checkpoint, _ = _malicious_files(tmp_path)
    with pytest.raises(TrainingError, match=r"checkpoint\.pt: unreadable checkpoint"):
        load_checkpoint(as_checkpoint, RunParams())
    assert not marker.exists()


def test_malicious_model_file_is_refused(tmp_path: Path) -> None:
    marker, as_checkpoint, as_pickle = _malicious_files(tmp_path)
    for path in (as_pickle, as_checkpoint):
        with pytest.raises(DataError, match=rf"{path.name}: not a model file written by this project"):
            load_weights(path)
    assert not marker.exists()
    # A whole pickled module (the classic unsafe way to save a model) is refused too.
    whole = tmp_path / "whole-model.pt"
    torch.save(MLP([8]), whole)
    with pytest.raises(DataError):
        load_weights(whole)


def test_safe_formats_still_load(tmp_path: Path) -> None:
    model = MLP([8, 4])
    save_weights(model, tmp_path / "m.safetensors")
    loaded = load_weights(tmp_path / "m.safetensors")
    assert loaded.hidden_sizes == [8, 4]
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def test_no_source_file_can_unpickle() -> None:
    """Every torch.load passes weights_only=True; no pickle, dill, joblib, np.load(allow_pickle) or jit.load."""
    problems, loads = [], 0
    for folder in SOURCE_DIRS:
        for path in sorted((PROJECT_ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            where = path.relative_to(PROJECT_ROOT)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                    if any(n and n.split(".")[0] in UNPICKLERS for n in names):
                        problems.append(f"{where}:{node.lineno}: imports {names}")
            for call in _calls(tree):
                name = _dotted(call.func)
                keywords = {k.arg: k.value for k in call.keywords}
                if name.endswith("torch.load") or name == "load" and "weights_only" in keywords:
                    loads += 1
                    flag = keywords.get("weights_only")
                    if not (isinstance(flag, ast.Constant) and flag.value is True):
                        problems.append(f"{where}:{call.lineno}: torch.load without weights_only=True")
                pickle_flag = keywords.get("allow_pickle")
                allows_pickle = pickle_flag is not None and not (
                    isinstance(pickle_flag, ast.Constant) and pickle_flag.value is False
                )
                if name.endswith("jit.load") or name.endswith("np.load") and allows_pickle:
                    problems.append(f"{where}:{call.lineno}: {name} can execute or unpickle")
                # torch.export.load unpickles: only runtimes.py may call it, behind its trust_pt2 refusal.
                if name.endswith("export.load") and where.as_posix() != "mnist_core/export/runtimes.py":
                    problems.append(f"{where}:{call.lineno}: {name} unpickles (load .pt2 files through load_predictor)")
    assert not problems, "\n".join(problems)
    assert loads >= 1, "the scan found no torch.load at all: is it looking at the right files?"


# --- nothing lands outside the cache or output folder ---------------------------------------------------------------


@pytest.mark.parametrize("file_name", ["../escaped.gz", "sub/../../escaped.gz", "/tmp/escaped.gz", "nested/x.gz"])
def test_file_names_cannot_leave_the_cache(file_name: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "raw" / "x"
    mirror = tmp_path / "mirror"
    (mirror / "nested").mkdir(parents=True)
    (mirror / "nested" / "x.gz").write_bytes(gzip.compress(b"data"))
    cache.mkdir(parents=True)
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(DownloadError, match=r"would write outside the cache folder"):
        fetch_verified(file_name, "0" * 64, cache, [str(mirror)])
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert not Path("/tmp/escaped.gz").exists()


def test_symlink_in_cache_cannot_redirect_a_write(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    outside = tmp_path / "outside.gz"
    outside.write_text("precious")
    (cache / "train-images-idx3-ubyte.gz").symlink_to(outside)
    with pytest.raises(DownloadError, match="would write outside the cache folder"):
        fetch_verified("train-images-idx3-ubyte.gz", "0" * 64, cache, [str(tmp_path)])
    assert outside.read_text() == "precious"


def test_gzip_member_name_from_a_mirror_is_ignored(tmp_path: Path) -> None:
    """A gzip header can carry a file name: it never decides where anything is written."""
    content = synthetic.idx_bytes(synthetic.learnable_split(5, seed=0)[1])
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="../../../evil-target", mode="wb", fileobj=buffer, mtime=0) as stream:
        stream.write(content)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "labels.gz").write_bytes(buffer.getvalue())
    cache = tmp_path / "deep" / "er" / "cache"
    path, _ = fetch_verified("labels.gz", hashlib.sha256(content).hexdigest(), cache, [str(mirror)])
    assert path == (cache / "labels.gz").resolve()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["labels.gz", "labels.gz"]


def test_parameter_paths_stay_inside_their_roots(tmp_path: Path) -> None:
    for name in ("../../escape", "/abs", "a/b", ".hidden", "x" * 65, "run\x00"):
        with pytest.raises(ValueError, match="run_name"):
            RunParams(run_name=name)
    params = RunParams(output_dir=tmp_path / "a" / ".." / "runs", run_name="ok.name-1")
    work = checkpoint_dir(params)
    assert work == (tmp_path / "runs" / ".checkpoints" / "ok.name-1")
    assert work.is_relative_to((tmp_path / "runs").resolve())


# --- secrets ---------------------------------------------------------------------------------------------------------


def test_mirror_credentials_stay_out_of_messages_logs_cards(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret_mirror = "http://reader:s3cret-token@127.0.0.1:9/mnist/"
    assert redact_url(secret_mirror) == "http://***@127.0.0.1:9/mnist/"
    assert redact_url("/plain/folder") == "/plain/folder"
    with caplog.at_level(logging.DEBUG), pytest.raises(DownloadError) as caught:
        fetch_verified("train-images-idx3-ubyte.gz", "0" * 64, tmp_path / "cache", [secret_mirror])
    assert "s3cret-token" not in str(caught.value) and "***@127.0.0.1:9" in str(caught.value)
    assert "s3cret-token" not in caplog.text

    params = RunParams(mirror=[secret_mirror, "/data/mnist"])
    assert params.public_dump()["mirror"] == ["http://***@127.0.0.1:9/mnist/", "/data/mnist"]
    assert params.mirror[0] == secret_mirror, "the run itself must still get the real mirror"
    file = DatasetFile(path=tmp_path / "f.gz", sha256="0" * 64, source=redact_url(secret_mirror))
    downloaded = Downloaded(dataset="mnist", files={"train_images": file})
    prepared = Prepared(dataset="mnist", path=tmp_path / "p.safetensors", sizes={"test": 2}, mean=0.13, std=0.31)
    trained = Trained(history=make_history(1), best_epoch=1, model_path=tmp_path / "m", checkpoint_dir=tmp_path)
    card = build_model_card("run-1", params, downloaded, prepared, trained, make_evaluation())
    assert "s3cret-token" not in card.model_dump_json() and "***@127.0.0.1:9" in card.model_dump_json()


def test_prefect_server_binds_to_loopback_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import Settings

    monkeypatch.delenv("PREFECT_SERVER_API_HOST", raising=False)
    assert Settings().server.api.host == "127.0.0.1"
    # What runs by default (README documents an opt-in MNIST_STACK_HOST=0.0.0.0; that is the user's choice).
    # The server `python flows/mnist.py` starts is checked live in tests/training/test_resume.py and
    # tests/launch/test_interrupt.py.
    for path in (PROJECT_ROOT / "Makefile", PROJECT_ROOT / ".ci" / "run"):
        if path.is_file():
            assert "0.0.0.0" not in path.read_text(), f"{path.name} binds a service to every interface"
