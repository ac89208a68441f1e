"""TensorBoard event files of a run, in ``<workdir>/tb``.

At every log point the run's values go in as scalars, against the step:
``train/loss`` (the batch's loss), ``train/accuracy`` (running, over the epoch),
``test/accuracy``, ``test/loss``, ``learning_rate``, ``step_time`` (seconds per step
since the previous sync point, test passes and checkpoints excluded) and, for runs
with ``--log-grads``, ``grad_norm/<layer>`` and ``update_ratio/<layer>``.

Each log point also holds an image, ``first_layer_kernels``: the first convolution's
kernels after that step, one tile per kernel, red positive, blue negative, white 0,
on one colour scale (±the largest weight). Runs with ``--log-grads`` add histograms,
``weights/<leaf>`` (after the step) and ``gradients/<leaf>`` (the step's), for every
parameter leaf such as ``conv1/conv/kernel`` (see :mod:`jaxcnn.histograms`). They go in
as the ``image`` and ``histo`` values of a summary, which TensorBoard's
``EventAccumulator`` returns from ``Images`` and ``Histograms`` and its plugins show.

The events are written with TensorBoard's own package: its protocol buffers, its scalar
summary and its record writer, which need neither TensorFlow nor PyTorch.

A resumed run must not show a step twice. So the events are cut into files at
checkpoints: after each checkpoint the next value starts a new file, named by the first
step it holds (``events.out.tfevents.step0000000101.jaxcnn``; TensorBoard reads a
folder's files in name order, which is then step order). A file holds the steps from
its first up to the next checkpoint at most, so a run that resumes from the checkpoint
at step S drops exactly the files whose first step is after S (:func:`truncate`),
just as ``metrics.jsonl`` loses its lines after S, and writes those steps again.
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from jaxcnn.config import TrainConfig
from jaxcnn.data import DATASETS
from jaxcnn.errors import writing
from jaxcnn.histograms import Histogram
from jaxcnn.inspection import features
from jaxcnn.lazy import lazy_import
from jaxcnn.training.loop import LogRecord
from jaxcnn.training.optim import learning_rate_schedule
from jaxcnn.training.parallel import host_value
from jaxcnn.training.state import TrainState
from jaxcnn.training.step import Metrics

# Loaded at the first log point (jaxcnn.lazy): start-up does not need them.
event_pb2 = lazy_import("tensorboard.compat.proto.event_pb2")
summary_pb2 = lazy_import("tensorboard.compat.proto.summary_pb2")
scalar_summary = lazy_import("tensorboard.plugins.scalar.summary_v2")
matplotlib = lazy_import("matplotlib")
pil_image = lazy_import("PIL.Image")
if TYPE_CHECKING:
    from tensorboard.summary.writer.record_writer import RecordWriter

#: The folder of a work dir that holds the event files.
TB_DIR = "tb"
_FILE_NAME = "events.out.tfevents.step{first:010d}.jaxcnn"
_FILE_PATTERN = re.compile(r"events\.out\.tfevents\.step(\d+)\.jaxcnn")
#: The tag of the first layer's kernels.
KERNELS_TAG = "first_layer_kernels"
#: Screen pixels per kernel weight, gap between kernels, and kernels per row in the image.
PIXELS_PER_WEIGHT, KERNEL_GAP, KERNELS_PER_ROW = 8, 2, 8
#: Colour of the gaps between kernels (RGB in [0, 1]): grey, apart from any weight's.
GAP_COLOUR = (0.35, 0.35, 0.35)


def learning_rate_at(config: TrainConfig, step: int) -> float:
    """Return the learning rate of the update that made step ``step`` (counting from 1)."""
    return float(learning_rate_schedule(config)(max(step - 1, 0)))


def scalars_of(record: LogRecord, learning_rate: float) -> dict[str, float]:
    """Return the TensorBoard scalars of one log record, by tag."""
    scalars = {
        "train/loss": record.loss,
        "train/accuracy": record.train_accuracy,
        "test/accuracy": record.test_accuracy,
        "test/loss": record.test_loss,
        "learning_rate": learning_rate,
    }
    if record.step_seconds is not None:
        scalars["step_time"] = record.step_seconds
    for group in ("grad_norm", "update_ratio"):
        for layer, value in (getattr(record, group) or {}).items():
            scalars[f"{group}/{layer}"] = value
    return scalars


def kernel_image(kernels: np.ndarray) -> summary_pb2.Summary.Image:
    """Return HWIO ``kernels`` drawn as one PNG of tiles, shared colour scale centred at 0."""
    tiles = features.kernel_tiles(kernels)
    big = tiles.repeat(PIXELS_PER_WEIGHT, axis=1).repeat(PIXELS_PER_WEIGHT, axis=2)
    grid = features.tile_grid(big, min(KERNELS_PER_ROW, len(tiles)), KERNEL_GAP)
    limit = float(np.max(np.abs(tiles))) or 1.0
    rgb = matplotlib.colormaps["RdBu_r"](0.5 + 0.5 * np.nan_to_num(grid) / limit)[..., :3]
    rgb = np.where(np.isnan(grid)[..., None], GAP_COLOUR, rgb)
    png = io.BytesIO()
    pil_image.fromarray(np.round(255 * rgb).astype(np.uint8)).save(png, format="PNG")
    height, width = grid.shape
    return summary_pb2.Summary.Image(
        height=height, width=width, colorspace=3, encoded_image_string=png.getvalue()
    )


def histogram_proto(histogram: Histogram) -> summary_pb2.HistogramProto:
    """Return a histogram computed by :func:`jaxcnn.histograms.histogram` as TensorBoard's proto."""
    counts = np.asarray(histogram["bucket"], np.float64)
    return summary_pb2.HistogramProto(
        min=float(histogram["min"]),
        max=float(histogram["max"]),
        num=float(counts.sum()),
        sum=float(histogram["sum"]),
        sum_squares=float(histogram["sum_squares"]),
        bucket_limit=np.asarray(histogram["bucket_limit"], np.float64).tolist(),
        bucket=counts.tolist(),
    )


def first_step_of(path: Path) -> int | None:
    """Return the first step held by a jaxcnn event file, or None for another file."""
    match = _FILE_PATTERN.fullmatch(path.name)
    return int(match.group(1)) if match else None


def truncate(folder: Path, last_step: int) -> list[Path]:
    """Delete the event files in ``folder`` that hold steps after ``last_step``; return them.

    Files that jaxcnn did not write are left alone.
    """
    if not folder.is_dir():
        return []
    dropped = [
        path
        for path in sorted(folder.iterdir())
        if (first := first_step_of(path)) is not None and first > last_step
    ]
    for path in dropped:
        path.unlink()
    return dropped


class Board:
    """Writes a run's log records into event files under ``folder``.

    A file is opened at the first record after creation or after :meth:`cut`, and
    flushed after every record, so a killed run leaves whole records behind.
    """

    def __init__(self, folder: Path, config: TrainConfig) -> None:
        self.folder = folder
        self.config = config
        self._records: RecordWriter | None = None
        self._first_conv: tuple[str, ...] | None = None

    def write(self, record: LogRecord) -> None:
        """Add the scalars of ``record`` at its step."""
        scalars = scalars_of(record, learning_rate_at(self.config, record.step))
        summary = summary_pb2.Summary()
        for tag, value in scalars.items():
            summary.value.extend(scalar_summary.scalar_pb(tag, value).value)
        self._write_summary(record.step, summary)

    def write_arrays(self, step: int, state: TrainState, metrics: Metrics) -> None:
        """Add the first layer's kernels and any histograms in ``metrics`` at ``step``."""
        summary = summary_pb2.Summary()
        kernels = host_value(features.layer_kernel(state.params, self._first_conv_of(state)))
        summary.value.add(tag=KERNELS_TAG, image=kernel_image(kernels))
        for tag, histogram in metrics.get("histograms", {}).items():
            summary.value.add(tag=tag, histo=histogram_proto(histogram))
        self._write_summary(step, summary)

    def _first_conv_of(self, state: TrainState) -> tuple[str, ...]:
        """Return the path of the model's first convolution, found once (by tracing)."""
        if self._first_conv is None:
            image_shape = DATASETS[self.config.dataset].image_shape
            self._first_conv = features.first_conv_path(state, image_shape)
        return self._first_conv

    def _write_summary(self, step: int, summary: summary_pb2.Summary) -> None:
        """Write ``summary`` at ``step`` into the current file (opened if none) and flush."""
        with writing(self.folder):
            if self._records is None:
                self._records = _open_event_file(self.folder, step)
            event = event_pb2.Event(wall_time=time.time(), step=step, summary=summary)
            self._records.write(event.SerializeToString())
            self._records.flush()

    def cut(self) -> None:
        """Close the current file (at a checkpoint); the next record starts a new one."""
        if self._records is not None:
            self._records.close()
            self._records = None

    def close(self) -> None:
        """Close the current file."""
        self.cut()


def _open_event_file(folder: Path, first_step: int) -> RecordWriter:
    """Create the event file whose first record is at ``first_step``, with its header."""
    # Imported here, not by lazy_import: that imports the parent packages at once, and
    # tensorboard.summary's own __init__ loads its v1 and v2 APIs (80 ms at every start).
    from tensorboard.summary.writer.record_writer import RecordWriter

    folder.mkdir(parents=True, exist_ok=True)
    stream: BinaryIO = (folder / _FILE_NAME.format(first=first_step)).open("xb")
    records = RecordWriter(stream)
    header = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
    records.write(header.SerializeToString())
    return records
