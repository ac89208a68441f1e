"""Datasets: tensorflow-datasets in, NumPy arrays out.

Each split is read once into memory as uint8 images (N, 28, 28, 1) and int32 labels.
Batches are drawn from a per-epoch permutation that is a pure function of
(seed, epoch), and every batch has the same shape: the last one of an epoch is padded
and carries a mask that is 0 on the padding, so a jitted step compiles once.

jaxcnn's own tfds builder (:mod:`jaxcnn.mnist_builder`) prepares a dataset once from the
original idx files, without TensorFlow, as uint8 tensors in the ``array_record`` format,
in ``<data_dir>/jaxcnn/<name>/<version>/``. Processes that find it unprepared take turns
through a lock file, and tfds moves a dataset into place only when it is whole.

Reading 70,000 records back through tfds's data source takes a few seconds, so the first
read of a prepared split also keeps its arrays beside it, in
``<data_dir>/jaxcnn/<name>/<version>/jaxcnn_arrays/`` (55 MB for MNIST); later reads load
those, without importing tfds at all (0.2 s of every start). A data dir that cannot be
written is read the slow way every time; a missing or damaged arrays file is read again
and rewritten.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import json
import os
import shutil
import socket
import tempfile
import urllib.parse
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from jaxcnn.errors import DataError
from jaxcnn.quiet import absl_errors_only

#: Environment variable naming a folder of the original ``.gz`` files (tfds's manual_dir).
MANUAL_DIR_ENV = "JAXCNN_MANUAL_DIR"
#: tfds's own environment variable for its data dir.
DATA_DIR_ENV = "TFDS_DATA_DIR"
#: tfds's data dir when neither ``--data-dir`` nor ``$TFDS_DATA_DIR`` names one
#: (``tensorflow_datasets.core.constants.DATA_DIR``). Only the fast read of kept arrays
#: (:func:`_read_kept_splits`) uses it, so that a run needs no tfds import; if tfds ever
#: moved its default, that read would find nothing here and tfds would read the data.
TFDS_DEFAULT_DATA_DIR = "~/tensorflow_datasets"
#: The name and version of jaxcnn's tfds builder (:class:`jaxcnn.mnist_builder.IdxDatasets`):
#: a prepared dataset lives in ``<data_dir>/<BUILDER_NAME>/<dataset>/<BUILDER_VERSION>/``.
BUILDER_NAME = "jaxcnn"
BUILDER_VERSION = "1.0.0"

_IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What jaxcnn knows about a tfds dataset it can train on."""

    name: str
    files: tuple[str, ...]
    url: str
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int] = (28, 28, 1)
    train_size: int = 60_000

    @property
    def num_classes(self) -> int:
        """Number of classes, the model's output width."""
        return len(self.class_names)


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        files=_IDX_FILES,
        url="https://storage.googleapis.com/cvdf-datasets/mnist/",
        class_names=tuple(str(digit) for digit in range(10)),
    ),
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        files=_IDX_FILES,
        url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        class_names=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
    ),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Split:
    """One split held in memory: ``images`` uint8 (N, H, W, C), ``labels`` int32 (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


# ----------------------------------------------------------------------------- locations


def resolve_data_dir(flag: str | None) -> str | None:
    """Return the tfds data dir: ``--data-dir``, else ``$TFDS_DATA_DIR``, else None (tfds's)."""
    return flag or os.environ.get(DATA_DIR_ENV) or None


def resolve_manual_dir(flag: str | None) -> str | None:
    """Return the folder of original files: ``--manual-dir``, else ``$JAXCNN_MANUAL_DIR``."""
    return flag or os.environ.get(MANUAL_DIR_ENV) or None


def check_locations(spec: DatasetSpec, data_dir: str | None, manual_dir: str | None) -> None:
    """Check that the given folders exist and the manual dir holds ``spec``'s files.

    Raises:
        DataError: naming the flag, the folder and what is wrong with it.

    """
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DataError(f"--data-dir {data_dir!r} (or ${DATA_DIR_ENV}) is not an existing folder")
    if manual_dir is None:
        return
    if not Path(manual_dir).is_dir():
        raise DataError(
            f"--manual-dir {manual_dir!r} (or ${MANUAL_DIR_ENV}) is not an existing folder"
        )
    missing = [name for name in spec.files if not (Path(manual_dir) / name).is_file()]
    if missing:
        raise DataError(
            f"--manual-dir {manual_dir!r} lacks the original {spec.name} files: "
            + ", ".join(missing)
        )


def download_host_reachable(url: str, timeout: float = 5.0) -> bool:
    """Return whether a TCP connection to ``url``'s host can be opened (no data is sent)."""
    parsed = urllib.parse.urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


# ----------------------------------------------------------------------------- reading


def _builder(spec: DatasetSpec, data_dir: str | None):  # -> mnist_builder.IdxDatasets
    """Return jaxcnn's tfds builder of ``spec``'s dataset in ``data_dir`` (None: tfds's)."""
    from jaxcnn.mnist_builder import IdxDatasets  # imports tfds: only when data is read

    try:
        return IdxDatasets(config=spec.name, data_dir=data_dir, file_format="array_record")
    except Exception as error:  # tfds reads the prepared dataset_info.json here
        raise DataError(
            f"{spec.name} in {data_dir or 'the default data dir'} cannot be read: "
            f"{_one_line(error)}; delete its folder jaxcnn/{spec.name} there to prepare it again"
        ) from error


#: Prefix of the temporary folder, in a dataset's folder, that downloads go to.
_DOWNLOADS_PREFIX = ".downloads-"


@contextlib.contextmanager
def _preparation_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder/.prepare.lock`` inside the block.

    Processes preparing the same dataset take turns; the lock goes with the process, so
    one that is killed never leaves it taken. (``fcntl``: POSIX only, as array_record.)

    Raises:
        DataError: the folder cannot be created or written.

    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = os.open(folder / ".prepare.lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:
        raise DataError(f"cannot prepare a dataset in {folder}: {error.strerror}") from error
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock)  # releases the lock


@contextlib.contextmanager
def _tfds_quiet() -> Iterator[None]:
    """Keep tfds's own output off the terminal while it prepares.

    That is its "Downloading and preparing dataset Unknown size" lines (printed to
    stdout) and its progress bars. Failures still arrive as exceptions.
    """
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()  # tfds has no way to ask whether they were on; jaxcnn never is
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _remove_leftovers(folder: Path) -> None:
    """Delete what killed preparations left in a dataset's folder.

    That is tfds's ``incomplete.*`` folders and jaxcnn's download folders; call this only
    while holding the preparation lock, when no other process is preparing.
    """
    for leftover in [*folder.glob("incomplete.*"), *folder.glob(f"{_DOWNLOADS_PREFIX}*")]:
        shutil.rmtree(leftover, ignore_errors=True)


def _prepare(spec: DatasetSpec, data_dir: str | None, manual_dir: str | None):  # -> IdxDatasets
    """Return a prepared tfds builder for ``spec``, preparing it first if needed.

    Downloads go to a temporary folder beside the dataset, deleted afterwards, so a
    prepared dataset costs only its own ~25 MB. Any number of processes may call this
    at once on one data dir: one prepares while the others wait, then read its result.
    """
    builder = _builder(spec, data_dir)
    if builder.is_prepared():
        return builder
    root = Path(builder.data_dir_root)
    if manual_dir is None and not download_host_reachable(spec.url):
        raise DataError(
            f"{spec.name} is not prepared in {root} and {spec.url} cannot be reached; to run "
            f"offline, pass --manual-dir (or set ${MANUAL_DIR_ENV}) to a folder holding "
            f"{', '.join(spec.files)}"
        )
    folder = Path(builder.data_dir).parent  # <data_dir>/jaxcnn/<name>, beside <version>
    with _preparation_lock(folder):
        builder = _builder(spec, data_dir)  # another process may have prepared it meanwhile
        if builder.is_prepared():
            return builder
        _remove_leftovers(folder)
        print(f"preparing {spec.name} in {root} from {manual_dir or spec.url} (once)", flush=True)
        import tensorflow_datasets as tfds

        config = tfds.download.DownloadConfig(
            manual_dir=manual_dir, force_checksums_validation=True
        )
        with (
            tempfile.TemporaryDirectory(dir=folder, prefix=_DOWNLOADS_PREFIX) as downloads,
            _tfds_quiet(),
        ):
            try:
                builder.download_and_prepare(download_dir=downloads, download_config=config)
            except Exception as error:  # tfds raises many kinds; all mean the same to the user.
                source = f"--manual-dir {manual_dir!r}" if manual_dir else spec.url
                raise DataError(
                    f"could not prepare {spec.name} from {source}: {_one_line(error)}"
                ) from error
    return builder


def _one_line(error: Exception) -> str:
    """Return ``error``'s type and message on one line (tfds's messages span several)."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def _read_split(builder, split: str) -> Split:  # builder: a prepared IdxDatasets
    """Read a whole prepared split into memory through tfds's data source."""
    source = builder.as_data_source(split=split)
    records = source.__getitems__(range(len(source)))  # one call: faster than one by one
    images = np.stack([record["image"] for record in records])
    labels = np.array([record["label"] for record in records], np.int32)
    return Split(images=images, labels=labels)


#: The folder, inside a prepared dataset's version folder, of its splits' arrays.
ARRAYS_DIR = "jaxcnn_arrays"


def _load_kept(path: Path, expected: int) -> Split | None:
    """Return the split kept in ``path`` if it is whole (``expected`` examples), else None."""
    try:
        with np.load(path) as arrays:
            kept = Split(images=arrays["images"], labels=arrays["labels"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # not kept yet, or damaged
    if len(kept.images) == len(kept.labels) == expected and kept.images.dtype == np.uint8:
        return kept
    return None


def _read_kept_splits(
    spec: DatasetSpec, data_dir: str | None, splits: tuple[str, ...]
) -> dict[str, Split] | None:
    """Return ``splits`` from their kept arrays, without tfds, or None if any is not kept.

    The dataset counts as prepared when its ``dataset_info.json`` is there: tfds writes a
    dataset in an ``incomplete.*`` folder and moves it into place only once it is whole.
    Each split must hold the number of examples that file gives it.
    """
    root = Path(data_dir or TFDS_DEFAULT_DATA_DIR).expanduser()
    folder = root / BUILDER_NAME / spec.name / BUILDER_VERSION
    try:
        info = json.loads((folder / "dataset_info.json").read_text())
        expected = {
            entry["name"]: sum(int(length) for length in entry["shardLengths"])
            for entry in info["splits"]
        }
    except (OSError, ValueError, KeyError, TypeError):
        return None
    kept = {
        split: _load_kept(folder / ARRAYS_DIR / f"{split}.npz", expected.get(split, -1))
        for split in splits
    }
    return None if any(split is None for split in kept.values()) else kept


def _read_split_kept(builder, split: str) -> Split:  # builder: a prepared IdxDatasets
    """Read a prepared split from its kept arrays, reading (and keeping) them if needed."""
    folder = Path(builder.data_dir) / ARRAYS_DIR
    path = folder / f"{split}.npz"
    kept = _load_kept(path, builder.info.splits[split].num_examples)
    if kept is not None:
        return kept
    read = _read_split(builder, split)
    try:
        folder.mkdir(exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{split}-", delete=False) as tmp:
            np.savez(tmp, images=read.images, labels=read.labels)
        os.chmod(tmp.name, 0o644)  # readable by all, as tfds's own files
        os.replace(tmp.name, path)  # whole or not at all, even with another reader
    except OSError:
        pass  # a read-only data dir: read through tfds every time
    return read


def load_dataset(
    name: str,
    data_dir: str | None,
    manual_dir: str | None,
    splits: tuple[str, ...] = ("train", "test"),
) -> dict[str, Split]:
    """Return the ``splits`` of dataset ``name`` in memory.

    Args:
        name: a key of :data:`DATASETS`.
        data_dir: tfds data dir, or None for tfds's default.
        manual_dir: folder of the original files, used when the dataset is not prepared.
        splits: which splits to read.

    Raises:
        DataError: the folders are wrong, or the data cannot be prepared or read.

    """
    if name not in DATASETS:
        raise DataError(f"--dataset {name!r} is unknown; choose one of {', '.join(DATASETS)}")
    spec = DATASETS[name]
    check_locations(spec, data_dir, manual_dir)
    kept = _read_kept_splits(spec, data_dir, splits)
    if kept is not None:
        return kept
    with absl_errors_only():  # tfds warns about the folders of a dataset not yet prepared
        builder = _prepare(spec, data_dir, manual_dir)
    try:
        return {split: _read_split_kept(builder, split) for split in splits}
    except Exception as error:
        raise DataError(
            f"could not read {name} from {builder.data_dir}: {_one_line(error)}"
        ) from error


# ----------------------------------------------------------------------------- batching


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """Return the order of the training examples in ``epoch``: a function of its arguments only."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Return the number of batches that cover ``num_examples`` once (the last may be short)."""
    return -(-num_examples // batch_size)


def batch_indices(order: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(indices, mask)`` of ``batch_size`` for consecutive batches of ``order``.

    The last batch is padded with index 0 where ``mask`` is 0, so every batch has the
    same shape and each example of ``order`` is counted exactly once.
    """
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        real = len(indices)
        mask = np.zeros(batch_size, np.float32)
        mask[:real] = 1.0
        yield np.pad(indices, (0, batch_size - real)), mask


def make_batch(split: Split, indices: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Gather a batch: ``image`` uint8 (B, H, W, C), ``label`` int32 (B,), ``mask`` float32 (B,)."""
    return {"image": split.images[indices], "label": split.labels[indices], "mask": mask}


def fixed_batches(split: Split, batch_size: int) -> list[dict[str, np.ndarray]]:
    """Return ``split`` in order as padded batches of ``batch_size`` (for evaluation)."""
    order = np.arange(len(split))
    return [make_batch(split, idx, mask) for idx, mask in batch_indices(order, batch_size)]
