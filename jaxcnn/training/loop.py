"""The training loop: for each epoch, for each batch, one step; the host reads back rarely.

:func:`train_and_evaluate` is the tutorial's ``for epoch ...: for step, (x, y) in
enumerate(loader): ...`` loop. It feeds fixed-shape batches to the compiled step and
reads values back from the devices only at sync points: log points, checkpoints, a stop
request, the end. Everything done there is :meth:`SyncPoints.at_sync_point`: fetch the
metrics, check they are finite, evaluate the test set, log, checkpoint. In between the
host reads nothing back; it only waits, before it queues a step, until no more than
:data:`STEPS_IN_FLIGHT` are queued. The loop can start anywhere in the data order, which
is what resuming needs. :mod:`jaxcnn.training.scan_loop` runs the steps between two
sync points as one compiled loop instead, with the same :meth:`SyncPoints.at_sync_point`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from jaxcnn import data
from jaxcnn.config import TrainConfig
from jaxcnn.errors import NonFiniteError
from jaxcnn.training.compile import CompiledSteps
from jaxcnn.training.evaluation import EvalResult, evaluate, placed_eval_batches
from jaxcnn.training.parallel import Placement, any_process, host_value
from jaxcnn.training.state import TrainState
from jaxcnn.training.step import Batch, Metrics, loss_and_gradients
from jaxcnn.training.timetable import Position, Timetable
from jaxcnn.trees import named_leaves

#: Steps the loop queues on the devices ahead of the one that is running. Without a
#: bound the host runs ahead to the next sync point, and XLA:CPU queues up to 32 steps: a
#: Ctrl-C or SIGTERM then waits for all of them before its checkpoint (a VGG-16 run on
#: the CPU went on for 12 minutes). With 2, a stop comes at most 2 steps later, and the
#: devices still always have a step queued: waiting for the step before last reads
#: nothing back and leaves the numbers as they were.
STEPS_IN_FLIGHT = 2


@dataclasses.dataclass(frozen=True)
class LogRecord:
    """One seed-style log line: where training is and how well it does.

    ``batch`` is the index of the batch just trained on within its epoch, ``step`` the
    number of steps taken in all, ``train_accuracy`` the running accuracy over the
    epoch's batches so far. ``step_seconds`` is the wall time per step since the
    previous sync point, test passes and checkpoints excluded; it differs between runs,
    so it is not part of ``metrics.jsonl``.
    """

    step: int
    epoch: int
    batch: int
    images_seen: int
    loss: float
    train_accuracy: float
    test_accuracy: float
    test_loss: float
    grad_norm: dict[str, float] | None = None
    update_ratio: dict[str, float] | None = None
    step_seconds: float | None = None


@dataclasses.dataclass(frozen=True)
class Hooks:
    """What the loop calls out to.

    Attributes:
        on_log: called at every log point with the log line's values.
        on_checkpoint: called when a checkpoint is due, with the state, the position
            after it and the test evaluation of that state (None for a stop's checkpoint
            between log and checkpoint points).
        stop_requested: polled after every step (host only); True ends the loop after
            a checkpoint.
        on_progress: called with the number of steps taken in all, from the host's
            counter (no device sync), after every step or, in the compiled loop, after
            each call of it.
        on_log_arrays: called at every log point after ``on_log``, with the step, the
            state and the log step's metrics read back to the host (with ``--log-grads``
            they hold the weight and gradient histograms), for TensorBoard's pictures.
    """

    on_log: Callable[[LogRecord], None]
    on_checkpoint: Callable[[TrainState, Position, EvalResult | None], None]
    stop_requested: Callable[[], bool] = lambda: False
    on_progress: Callable[[int], None] = lambda steps_done: None
    on_log_arrays: Callable[[int, TrainState, Metrics], None] = lambda step, state, metrics: None


@dataclasses.dataclass(frozen=True)
class LoopSetup:
    """What a training loop works with, besides the state it starts from.

    Every process of a multi-process run passes the same; each feeds its own rows of
    every global batch (see :mod:`jaxcnn.training.parallel`).
    """

    config: TrainConfig
    splits: dict[str, data.Split]
    compiled: CompiledSteps
    hooks: Hooks
    placement: Placement


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a training loop reports when it ends, finished or stopped."""

    state: TrainState
    steps: int
    epochs: float
    position: Position
    train_seconds: float
    test: EvalResult | None  # None: stopped where no test pass ran
    stopped: bool
    test_pass_seconds: float = 0.0  # of train_seconds, in the test passes at sync points


def train_and_evaluate(setup: LoopSetup, state: TrainState, position: Position) -> TrainResult:
    """Run the config's epochs from ``state`` at ``position`` until done or asked to stop.

    Raises:
        NonFiniteError: a step's loss or gradient was not finite; the state was frozen
            before that step, and no checkpoint is written of it.
    """
    config, compiled, placement = setup.config, setup.compiled, setup.placement
    sync = SyncPoints(setup, position)
    timetable = sync.timetable
    steps_done = timetable.steps_before(position.epoch, position.batch)
    for epoch in range(position.epoch, timetable.epochs_with_steps):
        first = sync.start_epoch(epoch)
        for batch_index, batch in step_batches(setup, epoch, first):
            log_grads = config.log_grads and timetable.is_log_point(batch_index)
            train_step = compiled.step_with_grad_stats if log_grads else compiled.step
            state, metrics = train_step(state, batch)
            if placement.wait_every_step:  # several CPU devices: see Placement
                jax.block_until_ready(metrics)
            elif len(sync.unread) >= STEPS_IN_FLIGHT:  # a bounded queue: see STEPS_IN_FLIGHT
                jax.block_until_ready(sync.unread[-STEPS_IN_FLIGHT])
            steps_done += 1
            if sync.record_step(metrics, batch_index, steps_done):
                sync.at_sync_point(state, epoch, batch_index, steps_done)
            if sync.stop:
                return sync.result(state, steps_done)
    return sync.result(state, steps_done)


class SyncPoints:
    """What the host does where the loop syncs with the devices, and carries between them.

    It holds the running train accuracy of the epoch (restored from ``position`` on
    resume), the step metrics not read back yet (``unread``), whether a stop was
    requested (``stop``), the placed test batches, the last test pass with its step
    (``last_test``) and the clock of the time per step.
    """

    def __init__(self, setup: LoopSetup, position: Position) -> None:
        self.config, self.compiled, self.hooks = setup.config, setup.compiled, setup.hooks
        self.placement = setup.placement
        self.train_split = setup.splits["train"]
        self.timetable = Timetable.of(self.config, len(self.train_split))
        self.test_batches = placed_eval_batches(
            setup.splits["test"], self.config.eval_batch_size, self.placement
        )
        self.resumed_epoch, self.resumed_batch = position.epoch, position.batch
        self.correct, self.count = position.correct, position.count
        self.unread: list[Metrics] = []  # device values not read back yet
        self.stop = False
        self.test_pass_seconds = 0.0
        self.last_test: tuple[int, EvalResult] | None = None
        self.started = self.clock_start = time.perf_counter()
        self.clock_steps = self.timetable.steps_before(position.epoch, position.batch)

    def start_epoch(self, epoch: int) -> int:
        """Return the epoch's first batch; in a new epoch, reset the running accuracy.

        The metrics of the last epoch not read back yet are dropped then.
        """
        if epoch == self.resumed_epoch:
            return self.resumed_batch
        self.correct = self.count = 0
        self.unread.clear()
        return 0

    def record_step(self, metrics: Metrics, batch: int, steps_done: int) -> bool:
        """Record the step(s) up to ``batch``: metrics, progress, a stop request.

        Return whether to sync now: at a log or checkpoint point, or to stop. One
        process polls its stop request after every step (host only). Several processes
        must stop after the same step, so they agree at log points only (a collective).
        """
        self.unread.append(metrics)
        self.hooks.on_progress(steps_done)
        if self.placement.num_processes == 1:
            self.stop = self.hooks.stop_requested()
        elif self.timetable.is_log_point(batch):
            self.stop = any_process(self.hooks.stop_requested())
        return self.stop or self.timetable.is_sync_point(batch, steps_done)

    def at_sync_point(self, state: TrainState, epoch: int, batch: int, steps_done: int) -> None:
        """Read back, check, evaluate, log and checkpoint after batch ``batch`` of ``epoch``.

        The log line is written at a log point, the checkpoint when one is due or a stop
        was requested. The test set is evaluated at log and checkpoint points; a stop's
        checkpoint between them is written without a test accuracy (it then competes
        for the newest checkpoints' places only, not for the best's), so that a stop
        does not wait for a test pass (5 minutes for VGG-16 on a 2-core CPU).

        Raises:
            NonFiniteError: a step since the last sync point went non-finite.
        """
        fetched = jax.tree.map(host_value, self.unread)  # the loop's only host syncs are here
        step_seconds = (time.perf_counter() - self.clock_start) / (steps_done - self.clock_steps)
        self.unread.clear()
        raise_if_nonfinite(self.config, self.train_split, state)
        self.correct += int(sum(m["correct"] for m in fetched))
        self.count += int(sum(m["count"] for m in fetched))
        log_point = self.timetable.is_log_point(batch)
        checkpoint_due = self.timetable.is_checkpoint_point(steps_done)
        test = None  # a stop alone takes no test pass: it would delay the stop by one
        if log_point or checkpoint_due:
            test_start = time.perf_counter()
            test = evaluate(self.compiled.eval, state, self.test_batches)
            self.test_pass_seconds += time.perf_counter() - test_start
            self.last_test = (steps_done, test)
        if log_point:
            self.hooks.on_log(
                LogRecord(
                    step=steps_done,
                    epoch=epoch,
                    batch=batch,
                    images_seen=batch * self.config.batch_size,
                    loss=float(fetched[-1]["loss"]),
                    train_accuracy=self.correct / self.count,
                    test_accuracy=test.accuracy,
                    test_loss=test.loss,
                    grad_norm=_floats(fetched[-1].get("grad_norm")),
                    update_ratio=_floats(fetched[-1].get("update_ratio")),
                    step_seconds=step_seconds,
                )
            )
            self.hooks.on_log_arrays(steps_done, state, fetched[-1])
        if self.stop or checkpoint_due:
            self.hooks.on_checkpoint(state, self._position_after(epoch, batch), test)
        self.clock_start, self.clock_steps = time.perf_counter(), steps_done

    def result(self, state: TrainState, steps_done: int) -> TrainResult:
        """Wait for the last step, check it, evaluate the test set; return the result.

        The run's last step is always a sync point (a checkpoint is due there), so the
        test pass of that point is the final one; the test set is evaluated here only
        when no step ran (``--epochs 0``, or resuming a run that stopped at its last
        step before writing its summary). A stopped run gets no test pass here.
        """
        state = jax.block_until_ready(state)
        train_seconds = time.perf_counter() - self.started
        raise_if_nonfinite(self.config, self.train_split, state)
        epoch, batch = self.timetable.epoch_and_batch(steps_done)
        if self.last_test is not None and self.last_test[0] == steps_done:
            test = self.last_test[1]
        elif self.stop:
            test = None
        else:
            test = evaluate(self.compiled.eval, state, self.test_batches)
        return TrainResult(
            state=state,
            steps=steps_done,
            epochs=steps_done / self.timetable.steps_per_epoch,
            position=Position(epoch=epoch, batch=batch, seed=self.config.seed),
            train_seconds=train_seconds,
            test=test,
            stopped=self.stop,
            test_pass_seconds=self.test_pass_seconds,
        )

    def _position_after(self, epoch: int, batch: int) -> Position:
        """Return the position after training batch ``batch`` of ``epoch``."""
        seed = self.config.seed
        if batch + 1 == self.timetable.steps_per_epoch:
            return Position(epoch=epoch + 1, batch=0, seed=seed)
        return Position(epoch, batch + 1, seed, correct=self.correct, count=self.count)


@functools.lru_cache(maxsize=2)
def epoch_batches(
    seed: int, batch_size: int, epoch: int, num_examples: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return ``(indices, mask)`` of every batch of ``epoch``, in order (the last two kept)."""
    order = data.epoch_permutation(seed, epoch, num_examples)
    return list(data.batch_indices(order, batch_size))


def step_batches(setup: LoopSetup, epoch: int, first: int) -> Iterator[tuple[int, Batch]]:
    """Yield ``epoch``'s batches from ``first`` on, up to the run's last step, for the step.

    Each process reads only its own rows of every global batch
    (:meth:`~jaxcnn.training.parallel.Placement.feed_batch`).
    """
    config, split, placement = setup.config, setup.splits["train"], setup.placement
    timetable = Timetable.of(config, len(split))
    last = min(timetable.steps_per_epoch, timetable.total_steps - timetable.steps_before(epoch, 0))
    batches = epoch_batches(config.seed, config.batch_size, epoch, len(split))
    rows = placement.local_rows(config.batch_size)
    for batch_index in range(first, last):
        indices, mask = batches[batch_index]
        local_batch = data.make_batch(split, indices[rows], mask[rows])
        yield batch_index, placement.feed_batch(local_batch, config.batch_size)


def batch_of_step(config: TrainConfig, split: data.Split, step: int) -> Batch:
    """Return the batch that step number ``step`` (counting from 1) trains on."""
    epoch, index = Timetable.of(config, len(split)).epoch_and_batch(step - 1)
    indices, mask = epoch_batches(config.seed, config.batch_size, epoch, len(split))[index]
    return data.make_batch(split, indices, mask)


def describe_nonfinite(state: TrainState, batch: Batch) -> str:
    """Say which of the loss and the gradient leaves are not finite for ``batch``."""
    loss, grads = loss_and_gradients(jax.tree.map(host_value, state), batch)
    bad = [path for path, leaf in named_leaves(grads) if not np.all(np.isfinite(leaf))]
    return f"loss {float(loss)}; non-finite gradient leaves: {', '.join(bad) or 'none'}"


def raise_if_nonfinite(config: TrainConfig, split: data.Split, state: TrainState) -> None:
    """Raise :class:`NonFiniteError` if a step of ``state`` went non-finite."""
    bad_step = int(host_value(state.nonfinite_step))
    if bad_step == 0:
        return
    epoch, index = Timetable.of(config, len(split)).epoch_and_batch(bad_step - 1)
    details = describe_nonfinite(state, batch_of_step(config, split, bad_step))
    raise NonFiniteError(
        f"the loss or gradient is not finite at step {bad_step} (epoch {epoch}, batch "
        f"{index}): {details}",
        step=bad_step,
    )


def _floats(values: dict[str, Any] | None) -> dict[str, float] | None:
    """Return a dict of fetched device scalars as Python floats (None stays None)."""
    return None if values is None else {key: float(value) for key, value in values.items()}
