"""TensorBoard event files of a run, in ``<workdir>/tb``.

At every log point the run's values go in as scalars, against the step:
``train/loss`` (the batch's loss), ``train/accuracy`` (running, over the epoch),
``test/accuracy``, ``test/loss``, ``learning_rate``, ``step_time`` (seconds per step
since the previous sync point, test passes and checkpoints excluded) and, for runs
with ``--log-grads``, ``grad_norm/<layer>`` and ``update_ratio/<layer>``.

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

import re
import time
from pathlib import Path
from typing import BinaryIO

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.scalar.summary_v2 import scalar_pb
from tensorboard.summary.writer.record_writer import RecordWriter

from jaxcnn.config import TrainConfig
from jaxcnn.training.loop import LogRecord
from jaxcnn.training.optim import learning_rate_schedule

#: The folder of a work dir that holds the event files.
TB_DIR = "tb"
_FILE_NAME = "events.out.tfevents.step{first:010d}.jaxcnn"
_FILE_PATTERN = re.compile(r"events\.out\.tfevents\.step(\d+)\.jaxcnn")


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

    def write(self, record: LogRecord) -> None:
        """Add the scalars of ``record`` at its step."""
        if self._records is None:
            self._records = _open_event_file(self.folder, record.step)
        scalars = scalars_of(record, learning_rate_at(self.config, record.step))
        summary = summary_pb2.Summary()
        for tag, value in scalars.items():
            summary.value.extend(scalar_pb(tag, value).value)
        event = event_pb2.Event(wall_time=time.time(), step=record.step, summary=summary)
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
    folder.mkdir(parents=True, exist_ok=True)
    stream: BinaryIO = (folder / _FILE_NAME.format(first=first_step)).open("xb")
    records = RecordWriter(stream)
    header = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
    records.write(header.SerializeToString())
    return records
