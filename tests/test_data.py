"""The input pipeline on the real MNIST files: contents, permutations, batches, errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxcnn import data


def test_splits_hold_the_whole_of_mnist_as_uint8(mnist):
    train, test = mnist["train"], mnist["test"]
    assert train.images.shape == (60_000, 28, 28, 1) and train.images.dtype == np.uint8
    assert test.images.shape == (10_000, 28, 28, 1) and test.images.dtype == np.uint8
    assert train.labels.dtype == np.int32 and test.labels.dtype == np.int32
    # The class counts of the original files, which fix the data regardless of order.
    assert np.bincount(train.labels).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949,
    ]  # fmt: skip
    assert np.bincount(test.labels).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009,
    ]  # fmt: skip
    assert train.images.max() == 255 and train.images.min() == 0


def test_epoch_permutation_covers_every_index_once_and_depends_only_on_seed_and_epoch():
    first = data.epoch_permutation(seed=7, epoch=2, num_examples=60_000)
    np.testing.assert_array_equal(np.sort(first), np.arange(60_000))
    np.testing.assert_array_equal(first, data.epoch_permutation(7, 2, 60_000))
    assert not np.array_equal(first, data.epoch_permutation(7, 3, 60_000))
    assert not np.array_equal(first, data.epoch_permutation(8, 2, 60_000))


def test_an_epoch_is_938_batches_of_64_and_the_last_holds_32():
    order = data.epoch_permutation(0, 0, 60_000)
    batches = list(data.batch_indices(order, 64))
    assert len(batches) == data.steps_per_epoch(60_000, 64) == 938
    assert all(indices.shape == (64,) and mask.shape == (64,) for indices, mask in batches)
    assert [mask.sum() for _, mask in batches[-2:]] == [64, 32]
    real = np.concatenate([indices[mask == 1] for indices, mask in batches])
    np.testing.assert_array_equal(real, order)


def test_make_batch_gathers_images_labels_and_mask(mnist):
    train = mnist["train"]
    indices, mask = np.array([5, 0, 0]), np.array([1, 1, 0], np.float32)
    batch = data.make_batch(train, indices, mask)
    np.testing.assert_array_equal(batch["image"][0], train.images[5])
    np.testing.assert_array_equal(batch["label"], train.labels[[5, 0, 0]])
    np.testing.assert_array_equal(batch["mask"], mask)


def test_missing_manual_files_are_named(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(data.DataError, match=r"t10k-labels-idx1-ubyte\.gz"):
        data.load_dataset("mnist", None, str(tmp_path))


def test_no_network_and_no_data_says_how_to_run_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "download_host_reachable", lambda url, timeout=5.0: False)
    with pytest.raises(data.DataError, match="--manual-dir"):
        data.load_dataset("mnist", str(tmp_path), None)
    assert not list(tmp_path.rglob("*.array_record*"))


def test_read_splits_are_kept_and_a_damaged_file_is_read_again(prepared_mnist, monkeypatch):
    data_dir, splits = prepared_mnist
    kept = next(Path(data_dir).glob(f"jaxcnn/mnist/*/{data.ARRAYS_DIR}/test.npz"))
    read_through_tfds = []
    monkeypatch.setattr(data, "_read_split", _counting(data._read_split, read_through_tfds))
    again = data.load_dataset("mnist", str(data_dir), None, splits=("test",))["test"]
    assert read_through_tfds == []  # read from the kept arrays
    np.testing.assert_array_equal(again.images, splits["test"].images)
    np.testing.assert_array_equal(again.labels, splits["test"].labels)
    kept.write_bytes(kept.read_bytes()[:1000])  # a file cut short
    again = data.load_dataset("mnist", str(data_dir), None, splits=("test",))["test"]
    assert read_through_tfds == ["test"]
    np.testing.assert_array_equal(again.images, splits["test"].images)
    with np.load(kept) as rewritten:
        np.testing.assert_array_equal(rewritten["labels"], splits["test"].labels)


def test_a_damaged_dataset_info_is_one_error_that_says_what_to_do(data_dir, tmp_path):
    copy = tmp_path / "tfds"
    shutil.copytree(data_dir, copy)
    info = next(copy.glob("jaxcnn/mnist/*/dataset_info.json"))
    info.write_text("{garbage")
    with pytest.raises(data.DataError) as raised:
        data.load_dataset("mnist", str(copy), None)
    message = str(raised.value)
    assert "\n" not in message and "cannot be read" in message
    assert "delete its folder jaxcnn/mnist there to prepare it again" in message


def test_kept_arrays_are_read_without_importing_tfds(data_dir, mnist):
    script = (
        "import sys\n"
        "from jaxcnn import data\n"
        f"splits = data.load_dataset('mnist', {str(data_dir)!r}, None)\n"
        "print(len(splits['train']), len(splits['test']), 'tensorflow_datasets' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["60000", "10000", "False"]


def test_tfds_default_data_dir_is_the_one_jaxcnn_reads_kept_arrays_from(monkeypatch):
    from tensorflow_datasets.core import constants

    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    expected = str(Path(data.TFDS_DEFAULT_DATA_DIR).expanduser())
    assert constants.get_default_data_dir() == expected


def test_kept_arrays_of_the_wrong_size_are_read_again(prepared_mnist, monkeypatch):
    data_dir, splits = prepared_mnist
    kept = next(Path(data_dir).glob(f"jaxcnn/mnist/*/{data.ARRAYS_DIR}/test.npz"))
    with np.load(kept) as arrays:
        np.savez(kept, images=arrays["images"][:-1], labels=arrays["labels"][:-1])
    read_through_tfds = []
    monkeypatch.setattr(data, "_read_split", _counting(data._read_split, read_through_tfds))
    again = data.load_dataset("mnist", str(data_dir), None, splits=("test",))["test"]
    assert read_through_tfds == ["test"]
    assert len(again) == 10_000
    with np.load(kept) as rewritten:
        np.testing.assert_array_equal(rewritten["labels"], splits["test"].labels)


def _counting(read_split, calls: list):
    def read(builder, split):
        calls.append(split)
        return read_split(builder, split)

    return read
