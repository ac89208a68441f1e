"""Seconds to prepare MNIST without TensorFlow, and to read it back: through tfds, kept arrays.

    python experiments/data_read_time.py [--manual-dir ../shared/data/mnist] [--rounds 3]

Prepares MNIST with jaxcnn's tfds builder into a fresh temporary data dir, then loads
both splits (70,000 records) with ``data.load_dataset``: through tfds's ``array_record``
data source (the kept arrays deleted first), and from the arrays jaxcnn keeps beside the
dataset; prints the first load and the median of the others over the rounds.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from jaxcnn import data

REPO = Path(__file__).resolve().parents[1]


def seconds(function) -> float:
    """Return the wall-clock seconds that ``function()`` takes."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manual-dir", default=str(REPO.parent / "shared/data/mnist"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        load = functools.partial(data.load_dataset, "mnist", data_dir, args.manual_dir)
        first = seconds(load)  # prepares, reads through tfds, keeps the arrays
        through_tfds, kept = [], []
        for _ in range(args.rounds):
            for arrays in Path(data_dir).glob(f"jaxcnn/mnist/*/{data.ARRAYS_DIR}"):
                shutil.rmtree(arrays)
            through_tfds.append(seconds(load))  # reads through tfds, keeps the arrays
            kept.append(seconds(load))
    print(f"first load (prepares, reads through tfds, keeps the arrays): {first:.1f} s")
    print(f"load through tfds's data source: {statistics.median(through_tfds):.2f} s")
    print(f"load the kept arrays: {statistics.median(kept):.3f} s")
    print(f"tensorflow imported: {'tensorflow' in sys.modules}")


if __name__ == "__main__":
    main()
