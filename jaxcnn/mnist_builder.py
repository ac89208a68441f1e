"""A tensorflow-datasets builder for MNIST and Fashion-MNIST that needs no TensorFlow.

tfds's own ``mnist`` and ``fashion_mnist`` builders extract the ``.gz`` files and encode
PNGs through TensorFlow. This one reads the original idx files with ``gzip`` and NumPy and
stores each image as a uint8 tensor, in the ``array_record`` format that tfds reads back
without TensorFlow too. Everything else is tfds's: the download manager fetches the files
(or takes them from a manual dir) and checks their sizes and SHA-256 against
``checksums.tsv`` beside this module, tfds's place for a builder's checksums; the split
writer stores the records, under the same keys as tfds's own builders, in the same order.

The builder is named ``jaxcnn`` with one config per dataset, so a prepared dataset lives
in ``<data_dir>/jaxcnn/<dataset>/<version>/`` and never meets ``<data_dir>/mnist/3.0.1/``
that tfds's TensorFlow-based builder may have prepared in the same data dir.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from jaxcnn.data import BUILDER_NAME, BUILDER_VERSION, DATASETS

#: The idx files of each split: (images, labels).
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
#: The idx type code of unsigned bytes, the only one MNIST and Fashion-MNIST use.
_IDX_UBYTE = 0x08


def read_idx(path: str | Path) -> np.ndarray:
    """Return the uint8 array held in a gzip-compressed idx file.

    An idx file is two zero bytes, a type code (0x08 for unsigned bytes), the number of
    dimensions, each dimension as a big-endian uint32, then the values in C order.

    Raises:
        ValueError: the file is not an idx file of unsigned bytes, or is cut short.

    """
    with gzip.open(path, "rb") as file:
        raw = file.read()
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != _IDX_UBYTE:
        raise ValueError(f"{path} is not an idx file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    values = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if values.size != np.prod(shape):
        raise ValueError(f"{path} holds {values.size} values, not the {shape} it declares")
    return values.reshape(shape)


class IdxDatasets(tfds.core.GeneratorBasedBuilder):
    """MNIST and Fashion-MNIST from their idx files, as uint8 tensors: one config each."""

    name = BUILDER_NAME
    VERSION = tfds.core.Version(BUILDER_VERSION)
    RELEASE_NOTES = {"1.0.0": "The idx files read with NumPy, stored as uint8 tensors."}  # noqa: RUF012
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name) for name in DATASETS]  # noqa: RUF012

    def _info(self) -> tfds.core.DatasetInfo:
        """Describe the features: a 28×28×1 uint8 image and its class."""
        spec = DATASETS[self.builder_config.name]
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{spec.name}, read from its original idx files without TensorFlow.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=spec.image_shape, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=spec.class_names),
                }
            ),
            supervised_keys=("image", "label"),
            homepage=spec.url,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        """Download (or find in the manual dir) the four files; no extraction."""
        spec = DATASETS[self.builder_config.name]
        paths = dl_manager.download({name: spec.url + name for name in spec.files})
        return {
            split: self._generate_examples(paths[images], paths[labels])
            for split, (images, labels) in SPLIT_FILES.items()
        }

    def _generate_examples(self, images_path: Path, labels_path: Path) -> Iterator[tuple]:
        """Yield ``(index, example)`` for each image of the idx files.

        The key is the index in the idx file, as in tfds's own builders, so tfds writes
        the records in the same order as they do (by the MD5 of split name and key).
        """
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or len(images) != len(labels):
            raise ValueError(
                f"{images_path} ({images.shape}) and {labels_path} ({labels.shape}) do not "
                "pair one label with each image"
            )
        for index, (image, label) in enumerate(zip(images[..., None], labels, strict=True)):
            yield index, {"image": image, "label": int(label)}
