"""The compiled loop (``--loop scan``): the steps between two sync points as one ``lax.scan``.

The same loop as :func:`jaxcnn.training.loop.train_and_evaluate`, but the training split
is copied to every device once and each call runs all the batches up to the next sync
point (:meth:`Timetable.batches_between_sync_points`) in one compiled function,
:func:`jaxcnn.training.step.scan_steps`; only their rows' indices and masks are sent. A
stop request is polled after each call. What happens at a sync point is the Python
loop's own :meth:`SyncPoints.at_sync_point`.
"""

from __future__ import annotations

import numpy as np

from jaxcnn.config import TrainConfig
from jaxcnn.training.loop import LoopSetup, SyncPoints, TrainResult, epoch_batches
from jaxcnn.training.state import TrainState
from jaxcnn.training.timetable import Position, Timetable


def train_and_evaluate_scanned(
    setup: LoopSetup, state: TrainState, position: Position
) -> TrainResult:
    """Run the config's epochs as :func:`train_and_evaluate` does, a scan per sync point.

    ``setup.compiled.scans`` holds the compiled loop for every (length, with gradient
    statistics) that :func:`scan_shapes` lists.
    """
    config, split = setup.config, setup.splits["train"]
    on_devices = setup.placement.replicate({"images": split.images, "labels": split.labels})
    sync = SyncPoints(setup, position)
    timetable = sync.timetable
    steps_done = timetable.steps_before(position.epoch, position.batch)
    for epoch in range(position.epoch, timetable.epochs_with_steps):
        first = sync.start_epoch(epoch)
        for batches in timetable.batches_between_sync_points(epoch, first):
            log_grads = config.log_grads and timetable.is_log_point(batches[-1])
            scan = setup.compiled.scans[(len(batches), log_grads)]
            rows = placed_rows(setup, epoch, batches)
            state, metrics = scan(state, on_devices["images"], on_devices["labels"], *rows)
            steps_done += len(batches)
            if sync.record_step(metrics, batches[-1], steps_done):
                sync.at_sync_point(state, epoch, batches[-1], steps_done)
            if sync.stop:
                return sync.result(state, steps_done)
    return sync.result(state, steps_done)


def placed_rows(setup: LoopSetup, epoch: int, batches: range) -> tuple[np.ndarray, np.ndarray]:
    """Return the row indices and masks of ``epoch``'s ``batches``, (steps × batch), placed."""
    config, split, placement = setup.config, setup.splits["train"], setup.placement
    every_batch = epoch_batches(config.seed, config.batch_size, epoch, len(split))
    rows = placement.local_rows(config.batch_size)
    local = {
        "indices": np.stack([every_batch[i][0][rows] for i in batches]).astype(np.int32),
        "masks": np.stack([every_batch[i][1][rows] for i in batches]),
    }
    placed = placement.put_step_rows(local, config.batch_size)
    return placed["indices"], placed["masks"]


def scan_shapes(config: TrainConfig, num_train: int, position: Position) -> list[tuple[int, bool]]:
    """Return the (length, with gradient statistics) of every scan the run will call."""
    timetable = Timetable.of(config, num_train)
    epochs = range(position.epoch, timetable.epochs_with_steps)
    return sorted(
        {
            (len(batches), config.log_grads and timetable.is_log_point(batches[-1]))
            for epoch in epochs
            for batches in timetable.batches_between_sync_points(
                epoch, position.batch if epoch == position.epoch else 0
            )
        }
    )
