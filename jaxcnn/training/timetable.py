"""When a run logs, checkpoints and ends: the arithmetic of steps, batches and epochs.

Steps are counted from 1 in all (``steps_done`` after a step); batches from 0 within
their epoch, as the tutorial's log line counts them.
"""

from __future__ import annotations

import dataclasses

from jaxcnn import data
from jaxcnn.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class Timetable:
    """The points of a run where the host reads values back from the devices.

    Attributes:
        steps_per_epoch: batches in an epoch (the last one may be partial).
        total_steps: steps the run takes in all: every epoch, capped by ``max_steps``.
        log_every: a log point is every ``log_every``-th batch of an epoch, from batch 0.
        checkpoint_every: a checkpoint is due every ``checkpoint_every`` steps in all.
    """

    steps_per_epoch: int
    total_steps: int
    log_every: int
    checkpoint_every: int

    @classmethod
    def of(cls, config: TrainConfig, num_train: int) -> Timetable:
        """Return the timetable of ``config``'s run over ``num_train`` training examples."""
        per_epoch = data.steps_per_epoch(num_train, config.batch_size)
        planned = config.epochs * per_epoch
        return cls(
            steps_per_epoch=per_epoch,
            total_steps=planned if config.max_steps is None else min(planned, config.max_steps),
            log_every=config.log_every,
            checkpoint_every=config.checkpoint_every or per_epoch,
        )

    @property
    def epochs_with_steps(self) -> int:
        """The number of epochs the run takes steps in (the last one may stop short)."""
        return -(-self.total_steps // self.steps_per_epoch)

    def steps_before(self, epoch: int, batch: int) -> int:
        """Return the steps taken before batch ``batch`` of ``epoch``."""
        return epoch * self.steps_per_epoch + batch

    def epoch_and_batch(self, steps_done: int) -> tuple[int, int]:
        """Return the epoch and batch of the next step after ``steps_done`` steps."""
        return divmod(steps_done, self.steps_per_epoch)

    def is_log_point(self, batch: int) -> bool:
        """Return whether training batch ``batch`` of an epoch is followed by a log line."""
        return batch % self.log_every == 0

    def is_checkpoint_point(self, steps_done: int) -> bool:
        """Return whether a checkpoint is due after ``steps_done`` steps (also at the end)."""
        return steps_done % self.checkpoint_every == 0 or steps_done == self.total_steps

    def is_sync_point(self, batch: int, steps_done: int) -> bool:
        """Return whether the host reads back after this step: a log or checkpoint point."""
        return self.is_log_point(batch) or self.is_checkpoint_point(steps_done)

    def batches_between_sync_points(self, epoch: int, first: int) -> list[range]:
        """Return ``epoch``'s batches from ``first`` on, cut after every sync point.

        The last range ends at the epoch's end or at the run's last step, whichever
        comes first. The compiled loop runs each range as one ``lax.scan``.
        """
        ranges = []
        while first < self.steps_per_epoch and self.steps_before(epoch, first) < self.total_steps:
            last = first
            while not (
                self.is_sync_point(last, self.steps_before(epoch, last) + 1)
                or last == self.steps_per_epoch - 1
            ):
                last += 1
            ranges.append(range(first, last + 1))
            first = last + 1
        return ranges


@dataclasses.dataclass(frozen=True)
class Position:
    """Where a run stands in its data order, after its last step.

    Attributes:
        epoch: the epoch the next step belongs to.
        batch: index within that epoch's order of the next batch to train on.
        seed: the seed of the run's permutations (they depend on seed and epoch only).
        correct: correctly classified training examples so far in this epoch.
        count: training examples seen so far in this epoch (for the running accuracy).
    """

    epoch: int
    batch: int
    seed: int
    correct: int = 0
    count: int = 0
