"""Preparing the datasets without TensorFlow, on the real files: contents, races, kills, output.

The expected arrays are parsed here straight from the idx files with gzip and NumPy,
independently of jaxcnn. tfds stores the records of a split sorted by the MD5 of the
split's name and the record's key (tensorflow_datasets/core/hashing.py); jaxcnn's keys
are the indices in the idx files, as in tfds's own TensorFlow-based builders, so the
arrays jaxcnn reads are the idx arrays in that order, the order runs had before.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.common import run_cli, run_summary

from jaxcnn import data, train

#: What tfds prints while preparing when left alone (stdout, and progress bars on stderr).
TFDS_CHATTER = ("Downloading and preparing", "Dl Completed", "Generating", "Shuffling", "absl")
#: The idx files of each split.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SHORT_RUN = ["--max-steps", "20", "--log-every", "10"]


def parse_idx(path: Path) -> np.ndarray:
    """Parse a gzip'd idx file: 0, 0, type 0x08 (uint8), ndim, big-endian uint32 dims, data."""
    raw = gzip.decompress(path.read_bytes())
    zero, type_code, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    assert (zero, type_code) == (0, 0x08), path
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw[4 + 4 * ndim :], np.uint8).reshape(dims)


def tfds_order(split: str, size: int) -> np.ndarray:
    """Return the idx indices in the order tfds stores records keyed by those indices."""
    digests = [hashlib.md5(f"{split}{index}".encode()).digest() for index in range(size)]
    return np.array(sorted(range(size), key=digests.__getitem__))


def assert_equals_idx_files(splits: dict[str, data.Split], folder: Path) -> None:
    """Assert that ``splits`` hold, byte for byte, the images and labels of the idx files."""
    for split, (images_file, labels_file) in IDX_FILES.items():
        images, labels = parse_idx(folder / images_file), parse_idx(folder / labels_file)
        order = tfds_order(split, len(labels))
        got = splits[split]
        assert got.images.dtype == np.uint8 and got.images.shape == (*images.shape, 1)
        assert got.images.tobytes() == images[order].tobytes(), split
        assert got.labels.dtype == np.int32
        assert got.labels.tobytes() == labels[order].astype(np.int32).tobytes(), split


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_what_jaxcnn_reads_is_the_idx_files_byte_for_byte(name, request):
    data_dir, first_read = request.getfixturevalue(f"prepared_{name}")
    folder = request.getfixturevalue("manual_dir" if name == "mnist" else "fashion_mnist_dir")
    assert_equals_idx_files(first_read, folder)  # read through tfds's data source
    kept = data.load_dataset(name, str(data_dir), None)  # read from the kept arrays
    assert_equals_idx_files(kept, folder)
    assert sorted(path.name for path in Path(data_dir).glob(f"jaxcnn/{name}/*/*/*.npz")) == [
        "test.npz",
        "train.npz",
    ]


def start(code: str) -> subprocess.Popen:
    """Start a fresh Python process running ``code``, capturing its output."""
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def train_code(data_dir: Path, manual_dir: Path, workdir: Path) -> str:
    """Return code that trains a short run as ``python -m jaxcnn.train`` does."""
    argv = [*SHORT_RUN, "--data-dir", str(data_dir), "--manual-dir", str(manual_dir)]
    argv += ["--workdir", str(workdir)]
    return f"import sys; from jaxcnn import train; sys.exit(train.cli_main({argv!r}))"


def params_sha256(workdir: Path) -> str:
    return run_summary(workdir)["params_sha256"]


@pytest.mark.slow
def test_two_processes_prepare_one_fresh_data_dir_at_once(data_dir, manual_dir, tmp_path):
    fresh = tmp_path / "tfds"
    fresh.mkdir()
    runs = [tmp_path / "first", tmp_path / "second"]
    processes = [start(train_code(fresh, manual_dir, run)) for run in runs]
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
    reference = tmp_path / "prepared_before"
    argv = [*SHORT_RUN, "--data-dir", str(data_dir), "--workdir", str(reference)]
    assert run_cli(train.cli_main, argv) == 0
    assert params_sha256(runs[0]) == params_sha256(runs[1]) == params_sha256(reference)
    # One process prepared while the other waited for it; only jaxcnn's line showed.
    preparing = f"preparing mnist in {fresh} from {manual_dir} (once)"
    assert sum(out.splitlines().count(preparing) for out, _ in outputs) == 1
    for out, err in outputs:
        assert not any(chatter in out + err for chatter in TFDS_CHATTER), out + err


@pytest.mark.slow
def test_preparing_training_and_evaluating_never_import_tensorflow(manual_dir, tmp_path):
    fresh, run = tmp_path / "tfds", tmp_path / "run"
    fresh.mkdir()
    evaluate_argv = ["--workdir", str(run), "--data-dir", str(fresh), "--json"]
    code = (
        train_code(fresh, manual_dir, run).replace("sys.exit", "assert 0 ==")
        + f"; from jaxcnn import evaluate; assert evaluate.cli_main({evaluate_argv!r}) == 0"
        + "; print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow'))"
    )
    process = start(code)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    assert out.startswith("backend:") and "preparing mnist" in out  # it did prepare
    assert '"test_accuracy"' in out  # and evaluated
    assert out.splitlines()[-1] == "[]"


@pytest.mark.slow
def test_a_killed_preparation_leaves_nothing_that_is_read_as_data(
    mnist, manual_dir, tmp_path, capsys
):
    fresh = tmp_path / "tfds"
    fresh.mkdir()
    process = start(
        f"from jaxcnn import data; data.load_dataset('mnist', '{fresh}', '{manual_dir}')"
    )
    folder = fresh / "jaxcnn" / "mnist"
    deadline = time.monotonic() + 300
    while not list(folder.glob("incomplete.*/*.array_record*")) and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)  # mid-way through writing the records
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert list(folder.glob("incomplete.*"))  # the unfinished dataset it was writing
    assert not (folder / "1.0.0").exists()  # nothing where a dataset is read from
    again = data.load_dataset("mnist", str(fresh), str(manual_dir))
    assert f"preparing mnist in {fresh}" in capsys.readouterr().out  # prepared anew
    for split in ("train", "test"):
        assert again[split].images.tobytes() == mnist[split].images.tobytes()
        assert again[split].labels.tobytes() == mnist[split].labels.tobytes()
    assert sorted(path.name for path in folder.iterdir()) == [".prepare.lock", "1.0.0"]


def test_a_file_with_the_wrong_checksum_is_refused_in_one_line(
    manual_dir, fashion_mnist_dir, tmp_path
):
    copies = tmp_path / "manual"
    copies.mkdir()
    for name in data.DATASETS["mnist"].files:
        os.symlink(manual_dir / name, copies / name)
    wrong = copies / "t10k-labels-idx1-ubyte.gz"
    wrong.unlink()
    os.symlink(fashion_mnist_dir / wrong.name, wrong)  # a valid idx file, of Fashion-MNIST
    with pytest.raises(data.DataError) as refused:
        data.load_dataset("mnist", str(tmp_path), str(copies))
    message = str(refused.value)
    assert "\n" not in message and "t10k-labels-idx1-ubyte.gz" in message
    assert "checksum" in message and str(copies) in message
    assert not any(tmp_path.glob("jaxcnn/mnist/1.0.0"))
