"""Using the model: the portable files agree with PyTorch on the whole test set, `mnist predict` reads what users
have and never loses a batch to one bad input, and the model it uses is the one asked for."""

import csv
import logging
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from PIL import Image

from launch.cli import main
from mnist_core.errors import DataError
from mnist_core.export.runtimes import load_predictor
from mnist_core.inference.predict import PredictParams, choose_model, predict
from mnist_core.registry.store import read_champion
from mnist_core.training.model import load_weights
from tests.support import PROJECT_ROOT
from tests.support.photos import write_photos

pytestmark = pytest.mark.slow  # they need the session's trained run (the real flow)


@pytest.fixture(scope="module")
def run(trained_run):
    result, _, output_dir = trained_run
    return result.exported, output_dir


@pytest.fixture(scope="module")
def digits(mnist_tensors, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], np.ndarray]:
    """The first 10 test digits as PNG files, dark ink on white paper, 140 px: (files, labels)."""
    folder = tmp_path_factory.mktemp("digits")
    images, labels = mnist_tensors["test_images"][:10].numpy(), mnist_tensors["test_labels"][:10].numpy()
    files = []
    for index, image in enumerate(images):
        files.append(folder / f"digit-{index}.png")
        Image.fromarray(255 - image).resize((140, 140)).save(files[-1])
    return files, labels


def test_onnx_and_torch_export_agree_with_pytorch_on_the_whole_test_set(run, mnist_tensors) -> None:
    exported, _ = run
    images, labels = mnist_tensors["test_images"].numpy(), mnist_tensors["test_labels"].numpy()
    model = load_weights(exported.model).eval()
    with torch.no_grad():
        reference = model(torch.from_numpy(images)).numpy()
    card_accuracy = exported.card.metrics.test_accuracy
    assert (reference.argmax(1) == labels).mean() == card_accuracy
    for name in ("model.onnx", "model.pt2"):
        logits = load_predictor(exported.run_dir / name, trust_pt2=True).logits(images)
        assert logits.shape == (10_000, 10) and logits.dtype == np.float32
        assert (logits.argmax(1) == reference.argmax(1)).all(), name
        np.testing.assert_allclose(logits, reference, atol=1e-4, rtol=0, err_msg=name)
        assert (logits.argmax(1) == labels).mean() == card_accuracy, name


def test_predict_prints_a_table_and_writes_the_csv(run, digits, tmp_path: Path, capsys) -> None:
    files, labels = digits
    _, output_dir = run
    output = tmp_path / "predictions.csv"
    code = main(["predict", *map(str, files), "--output-dir", str(output_dir), "--output", str(output)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    rows = list(csv.DictReader(output.open()))
    assert [row["input"] for row in rows] == [str(file) for file in files]
    assert [int(row["predicted_class"]) for row in rows] == labels.tolist()
    assert all(0 < float(row["confidence"]) <= 1 and len(row["top3"].split()) == 3 for row in rows)
    assert all(str(file) in printed for file in files) and "top-3" in printed


def test_a_bad_input_is_a_row_and_the_others_are_kept(run, digits, tmp_path: Path, capsys) -> None:
    files, labels = digits
    _, output_dir = run
    broken = tmp_path / "cut.png"
    broken.write_bytes(files[0].read_bytes()[:60])
    output = tmp_path / "out.csv"
    code = main(["predict", str(files[0]), str(broken), str(tmp_path / "missing.png"), str(files[1]),
                 "--output-dir", str(output_dir), "--output", str(output)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 3
    rows = list(csv.DictReader(output.open()))
    assert [row["predicted_class"] for row in rows] == [str(labels[0]), "", "", str(labels[1])]
    assert "cut.png" in rows[1]["error"] and "missing.png" in rows[2]["error"]
    assert "Failed: 2 of 4" in err and "cut.png" in err


def test_a_name_that_is_not_utf8_and_a_closed_pipe_lose_nothing(run, digits, tmp_path: Path) -> None:
    files, labels = digits
    _, output_dir = run
    odd = tmp_path / os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not UTF-8
    odd.write_bytes(files[0].read_bytes())
    output = tmp_path / "out.csv"
    # `| head -1`: the reader closes the pipe after one line, long before the table ends.
    command = f"{sys.executable} -m mnist_core predict {tmp_path} {files[0].parent} --output-dir {output_dir} " \
              f"--output {output} | head -1"  # fmt: skip
    result = subprocess.run(command, shell=True, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    rows = list(csv.DictReader(output.open(encoding="utf-8")))
    assert len(rows) == 11 and rows[0]["input"].endswith("caf\\xe9.png") and rows[0]["error"] == ""
    assert rows[0]["predicted_class"] == str(labels[0])


def test_low_confidence_predictions_are_listed_for_review(run, digits, capsys) -> None:
    files, _ = digits
    _, output_dir = run
    batch = predict(PredictParams(inputs=[str(files[0].parent)], output_dir=output_dir, threshold=1.0))
    assert len(batch.for_review) == len(batch.predictions) == 10  # no prediction is 100 % sure
    assert main(["predict", str(files[0]), "--output-dir", str(output_dir), "--threshold", "1"]) == 0
    assert "For review, confidence below 1.00: 1 of 1" in capsys.readouterr().out


def test_the_model_is_the_champion_a_run_folder_a_run_id_or_a_file(run, digits) -> None:
    exported, output_dir = run
    champion = read_champion(output_dir, "mnist")
    assert champion is not None
    for spec, runtime, expected in [
        ("champion", "onnx", champion.run_dir / "model.onnx"),
        (str(exported.run_dir), "pytorch", exported.run_dir / "model.safetensors"),
        (exported.run_id, "pytorch", exported.run_dir / "model.safetensors"),
        (str(exported.run_dir / "model.safetensors"), "onnx", exported.run_dir / "model.safetensors"),  # file wins
    ]:
        chosen = choose_model(spec, output_dir, "mnist", runtime)
        assert chosen.path == expected and chosen.run_id == exported.run_id, spec
        batch = predict(PredictParams(inputs=[str(digits[0][0])], model=spec, output_dir=output_dir, runtime=runtime))
        assert batch.predictions[0].predicted_class == digits[1][0], spec


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "none.onnx", "none.onnx: no such model file"),
        (lambda tmp: _write(tmp / "random.onnx", os.urandom(2048)), "random.onnx: not an ONNX model"),
        (lambda tmp: _write(tmp / "random.pt2", os.urandom(2048)), "random.pt2: refused: loading a .pt2 file runs"),
        (lambda tmp: _write(tmp / "random.safetensors", os.urandom(64)), "random.safetensors: not a model file"),
        (lambda tmp: _write(tmp / "weights.bin", b"x"), "weights.bin: not a model file"),
    ],
)
def test_a_file_that_is_not_a_model_is_refused_by_name(make, message: str, digits, tmp_path: Path, capsys) -> None:
    model = make(tmp_path)
    assert main(["predict", str(digits[0][0]), "--model", str(model), "--output", str(tmp_path / "p.csv")]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()


def test_a_pt2_file_is_loaded_only_when_trusted(run, digits, tmp_path: Path, caplog) -> None:
    """torch.export.load can unpickle, so running code from the file: no card beside it can vouch for it."""
    exported, output_dir = run
    with pytest.raises(DataError, match="refused: loading a .pt2 file runs code"):
        load_predictor(exported.run_dir / "model.pt2")
    assert load_predictor(exported.run_dir / "model.pt2", trust_pt2=True).runtime == "torch-export"
    params = PredictParams(inputs=[str(digits[0][0])], model=exported.run_id, output_dir=output_dir,
                           runtime="torch-export", trust_pt2=True)  # fmt: skip
    assert predict(params).predictions[0].predicted_class == digits[1][0]
    # A trusted file that is an archive but no exported program: one line, not torch's logged traceback first
    # (found by a docs check: a dozen lines of `W... torch/export/__init__.py` before it).
    fake = tmp_path / "fake.pt2"
    with zipfile.ZipFile(fake, "w") as archive:
        archive.writestr("archive/version", "0")
    with caplog.at_level(logging.WARNING), pytest.raises(DataError, match="not a torch.export model this project"):
        load_predictor(fake, trust_pt2=True)
    assert "deserializing" not in caplog.text


@pytest.mark.parametrize("name", ["model.onnx", "model.safetensors"])
def test_a_model_file_changed_after_export_is_refused_in_its_runs_name(run, name: str, tmp_path: Path) -> None:
    import shutil

    exported, _ = run
    copy = tmp_path / "run"
    shutil.copytree(exported.run_dir, copy)
    content = bytearray((copy / name).read_bytes())
    content[-1] ^= 1  # one bit of one weight
    (copy / name).write_bytes(bytes(content))
    with pytest.raises(DataError, match="changed after the run exported it"):
        load_predictor(copy / name)


def test_no_champion_yet_says_so(digits, tmp_path: Path, capsys) -> None:
    assert main(["predict", str(digits[0][0]), "--output-dir", str(tmp_path / "empty")]) == 1
    assert "no mnist champion in" in capsys.readouterr().err
    with pytest.raises(DataError, match="no fashion-mnist champion.*`make run ARGS='--dataset fashion-mnist'`"):
        choose_model("champion", tmp_path, "fashion-mnist", "onnx")


def test_bad_usage_exits_2_naming_the_flag(capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["predict", "x.png", "--threshold", "1.5"])
    assert stopped.value.code == 2 and "--threshold" in capsys.readouterr().err
    assert main(["bogus"]) == 2 and main([]) == 2


def test_an_output_that_would_overwrite_an_input_or_a_model_is_refused(digits, tmp_path: Path, capsys) -> None:
    """Found by a new user: `--output` naming an input replaced that image with the CSV."""
    image = tmp_path / "a.png"
    image.write_bytes(digits[0][0].read_bytes())
    csv_named = tmp_path / "predictions"  # an input without a suffix: still refused as the input itself
    csv_named.write_bytes(image.read_bytes())
    run_folder = tmp_path / "runs" / "20261127T000000Z-0"
    run_folder.mkdir(parents=True)
    (run_folder / "model_card.json").write_text("{}")
    records = "would replace one of the training records"  # found in review: the registry was not protected
    for output, message in [(image, "looks like an image or model file"), (tmp_path / "m.onnx", "looks like"),
                            (tmp_path, "is a folder"), (csv_named, "is one of the inputs"),
                            (tmp_path / "runs" / "registry.csv", records), (run_folder / "metrics.csv", records),
                            (tmp_path / "runs" / "champion-mnist.json", records)]:  # fmt: skip
        with pytest.raises(SystemExit) as stopped:
            main(["predict", str(image), str(csv_named), "--output", str(output)])
        assert stopped.value.code == 2 and message in capsys.readouterr().err, output
    assert image.read_bytes() == digits[0][0].read_bytes() and csv_named.read_bytes() == image.read_bytes()


def test_an_output_in_a_missing_folder_is_refused_and_creates_nothing(run, digits, tmp_path: Path, capsys) -> None:
    """Found by a new user: --output /nonexist/dir/x.csv created /nonexist/dir at the filesystem's root."""
    exported, output_dir = run
    output = tmp_path / "no" / "such" / "p.csv"
    assert main(["predict", str(digits[0][0]), "--output-dir", str(output_dir), "--output", str(output)]) == 1
    assert f"folder {output.parent} does not exist" in capsys.readouterr().err and not (tmp_path / "no").exists()


def test_predicting_with_onnx_never_imports_torch(run, digits) -> None:
    """The console script, as installed, with the default ONNX runtime."""
    _, output_dir = run
    script = (
        "import sys; from launch.cli import main; code = main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(code)"
    )
    command = [sys.executable, "-c", script, "predict", *map(str, digits[0]), "--output-dir", str(output_dir)]
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    console_script = Path(sys.executable).parent / "mnist"
    result = subprocess.run([str(console_script), "predict", str(digits[0][0]), "--output-dir", str(output_dir)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0 and "digit-0.png" in result.stdout, result.stderr


def test_photographed_digits_are_recognized_nearly_as_well_as_clean_ones(run, mnist_tensors, tmp_path: Path) -> None:
    """MNIST test digits as a person would photograph them (dark ink on tinted paper, large, off-centre, PNG or
    JPEG), brought back to MNIST form by the same preparation `mnist predict` uses."""
    exported, _ = run
    count = 500  # the same assertion as with 1000 (standard error ~1 point against a 5-point margin), in half the time
    images, labels = mnist_tensors["test_images"][:count].numpy(), mnist_tensors["test_labels"][:count].numpy()
    files = write_photos(images, tmp_path, seed=0)
    batch = predict(PredictParams(inputs=[str(tmp_path)], model=str(exported.run_dir)))
    by_name = {row.input: row.predicted_class for row in batch.predictions}
    predicted = np.array([by_name[str(file)] for file in files])
    photo_accuracy = (predicted == labels).mean()
    clean = load_predictor(exported.run_dir / "model.onnx").logits(images).argmax(1)
    clean_accuracy = (clean == labels).mean()
    print(f"\nfirst {count} test digits: clean {clean_accuracy:.2%}, photographed {photo_accuracy:.2%}")
    assert not batch.failed
    assert photo_accuracy >= clean_accuracy - 0.05


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def test_ctrl_c_while_the_images_are_read_is_one_line_and_130(run, digits, tmp_path: Path) -> None:
    """Found by a fault battery: a Ctrl-C to the process group while a big folder was read printed a traceback.
    The signal is sent once the command has one of the folder's files open (the reading has begun)."""
    _, output_dir = run
    folder = tmp_path / "many"
    folder.mkdir()
    content = digits[0][0].read_bytes()
    for index in range(4000):
        (folder / f"{index:04d}.png").write_bytes(content)
    output = tmp_path / "out.csv"
    command = [str(Path(sys.executable).parent / "mnist"), "predict", str(folder), "--output-dir", str(output_dir),
               "--output", str(output)]  # fmt: skip

    # Ctrl-C's default action, as a shell gives a foreground command: xdist's workers ignore SIGINT, and a child
    # would inherit that and never see it (as in tests/launch/test_interrupt.py).
    def as_a_shell_starts_it() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, preexec_fn=as_a_shell_starts_it)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            try:
                if any(Path(item.path).parent == folder for item in psutil.Process(process.pid).open_files()):
                    break
            except psutil.Error:
                pass
            time.sleep(0.002)
        assert process.poll() is None, f"it ended before reading was caught: {process.communicate()}"
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches the whole group
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, (out, err)
    assert err.strip() == "mnist predict: interrupted (Ctrl-C); no predictions written", err
    assert not output.exists()
