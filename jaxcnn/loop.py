"""The host-side loops: compile the steps, run the epochs, evaluate a split.

The loop is thin on purpose: it draws each epoch's order, feeds fixed-shape batches to
the compiled step and reads values back from the device only at sync points (log
lines, checkpoints, a stop request, the end), so the host never waits for the device
in between. It can start anywhere in the data order, which is what resuming needs.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jaxcnn import data, steps
from jaxcnn.checkpoint import Position
from jaxcnn.config import TrainConfig
from jaxcnn.parallel import Placement, any_process, host_value
from jaxcnn.trees import named_leaves

TrainFn = Callable[[steps.TrainState, steps.Batch], tuple[steps.TrainState, steps.Metrics]]
EvalFn = Callable[[steps.TrainState, steps.Batch], steps.Metrics]


class NonFiniteError(Exception):
    """The loss or a gradient became NaN or Inf; the message says at which step and where."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Totals over a whole split, each example counted once."""

    loss: float
    accuracy: float
    correct: int
    count: int


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
class CompiledSteps:
    """The compiled step functions of a run.

    Attributes:
        train: the training step.
        train_with_stats: the training step that also returns per-layer gradient norms
            and update ratios (``--log-grads``), used at log points only; or None.
        eval: the evaluation step.
        seconds: time spent compiling them.
    """

    train: TrainFn
    train_with_stats: TrainFn | None
    eval: EvalFn
    seconds: float


@dataclasses.dataclass(frozen=True)
class Hooks:
    """What the loop calls out to.

    Attributes:
        on_log: called at every log point with the log line's values.
        on_checkpoint: called when a checkpoint is due, with the state, the position
            after it and the test evaluation of that state.
        stop_requested: polled after every step (host only); True ends the loop after
            a checkpoint.
        on_progress: called with the number of steps taken in all, from the host's
            counter (no device sync), after every step or, in a loop that runs several
            steps at once, after each chunk of steps.
    """

    on_log: Callable[[LogRecord], None]
    on_checkpoint: Callable[[steps.TrainState, Position, EvalResult], None]
    stop_requested: Callable[[], bool] = lambda: False
    on_progress: Callable[[int], None] = lambda taken: None


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a training loop reports when it ends, finished or stopped."""

    state: steps.TrainState
    steps: int
    epochs: float
    position: Position
    train_seconds: float
    test: EvalResult
    stopped: bool


def compile_steps(
    state: steps.TrainState,
    train_batch: steps.Batch,
    eval_batch: steps.Batch,
    placement: Placement,
    log_grads: bool = False,
) -> CompiledSteps:
    """Compile ``train_step`` (state buffers donated) and ``eval_step`` ahead of time.

    Both are compiled for ``placement``: the state replicated, the batch split along
    the mesh's ``data`` axis, so that with several devices XLA sums the gradients with
    an all-reduce. With ``log_grads`` the step that also measures gradients is compiled
    too, apart, so the steps between log points run exactly the plain step. Under
    ``jax_debug_nans`` the jitted functions are returned uncompiled, since the checks
    that find the failing operation work on those.
    """
    start = time.perf_counter()
    shardings = {
        "in_shardings": (placement.replicated, placement.batch_sharding),
        "out_shardings": (placement.replicated, placement.replicated),
    }
    functions = {
        "train": jax.jit(steps.train_step, donate_argnums=0, **shardings),
        "train_with_stats": jax.jit(
            functools.partial(steps.train_step, with_grad_stats=True),
            donate_argnums=0,
            **shardings,
        )
        if log_grads
        else None,
        "eval": jax.jit(
            steps.eval_step,
            in_shardings=shardings["in_shardings"],
            out_shardings=placement.replicated,
        ),
    }
    if not jax.config.jax_debug_nans:
        batches = {"train": train_batch, "train_with_stats": train_batch, "eval": eval_batch}
        functions = {
            name: None if function is None else function.lower(state, batches[name]).compile()
            for name, function in functions.items()
        }
    return CompiledSteps(**functions, seconds=time.perf_counter() - start)


def evaluate(
    eval_fn: EvalFn, state: steps.TrainState, batches: Sequence[steps.Batch]
) -> EvalResult:
    """Return loss and accuracy of ``state`` over all ``batches`` (a whole split, padded)."""
    results = [eval_fn(state, batch) for batch in batches]  # dispatch all, then read back
    totals = [jax.tree.map(host_value, result) for result in results]
    loss_sum = sum(float(t["loss_sum"]) for t in totals)
    correct = sum(int(t["correct"]) for t in totals)
    count = sum(int(t["count"]) for t in totals)
    return EvalResult(loss=loss_sum / count, accuracy=correct / count, correct=correct, count=count)


def placed_eval_batches(
    split: data.Split, batch_size: int, placement: Placement
) -> list[steps.Batch]:
    """Return ``split`` as padded batches on ``placement``'s mesh, for :func:`evaluate`.

    The batch size is rounded up to a multiple of the device count; padding is masked,
    so every example still counts once.
    """
    size = placement.round_up(batch_size)
    rows = placement.local_rows(size)
    return [
        placement.put_batch({key: value[rows] for key, value in batch.items()}, size)
        for batch in data.fixed_batches(split, size)
    ]


def total_steps(config: TrainConfig, num_train: int) -> int:
    """Return how many steps the run takes: every epoch, capped by ``max_steps``."""
    planned = config.epochs * data.steps_per_epoch(num_train, config.batch_size)
    return planned if config.max_steps is None else min(planned, config.max_steps)


def batch_of_step(config: TrainConfig, split: data.Split, step: int) -> steps.Batch:
    """Return the batch that step number ``step`` (counting from 1) trains on."""
    per_epoch = data.steps_per_epoch(len(split), config.batch_size)
    epoch, index = divmod(step - 1, per_epoch)
    order = data.epoch_permutation(config.seed, epoch, len(split))
    indices, mask = list(data.batch_indices(order, config.batch_size))[index]
    return data.make_batch(split, indices, mask)


def describe_nonfinite(state: steps.TrainState, batch: steps.Batch) -> str:
    """Say which of the loss and the gradient leaves are not finite for ``batch``."""
    loss, grads = steps.loss_and_gradients(jax.tree.map(host_value, state), batch)
    bad = [path for path, leaf in named_leaves(grads) if not np.all(np.isfinite(leaf))]
    return f"loss {float(loss)}; non-finite gradient leaves: {', '.join(bad) or 'none'}"


def train(
    config: TrainConfig,
    splits: dict[str, data.Split],
    state: steps.TrainState,
    position: Position,
    compiled: CompiledSteps,
    hooks: Hooks,
    placement: Placement,
) -> TrainResult:
    """Run ``config``'s epochs from ``state`` at ``position`` until done or asked to stop.

    Every process of a multi-process run calls this with the same arguments; each
    feeds its own rows of every global batch (see :mod:`jaxcnn.parallel`).

    A log point is every ``config.log_every``-th batch of an epoch, counting from 0 as
    the seed does; each evaluates the whole test set. A checkpoint is due every
    ``config.checkpoint_every`` steps (default: at each epoch's end), when training
    ends, and when a stop is requested.

    Raises:
        NonFiniteError: a step's loss or gradient was not finite; the state was frozen
            before that step, and no checkpoint is written of it.
    """
    train_split = splits["train"]
    test_batches = placed_eval_batches(splits["test"], config.eval_batch_size, placement)
    rows = placement.local_rows(config.batch_size)
    per_epoch = data.steps_per_epoch(len(train_split), config.batch_size)
    checkpoint_every = config.checkpoint_every or per_epoch
    steps_to_take = total_steps(config, len(train_split))
    taken = position.epoch * per_epoch + position.batch
    correct, count = position.correct, position.count
    stopped = False
    start = time.perf_counter()
    resumed_at, resumed_taken = start, taken  # after the last sync point's host work
    for epoch in range(position.epoch, config.epochs):
        if taken >= steps_to_take or stopped:
            break
        order = data.epoch_permutation(config.seed, epoch, len(train_split))
        first = position.batch if epoch == position.epoch else 0
        if epoch != position.epoch:
            correct = count = 0
        pending: list[steps.Metrics] = []  # device values not read back yet
        batches = list(data.batch_indices(order, config.batch_size))
        for batch_index in range(first, per_epoch):
            if taken >= steps_to_take:
                break
            indices, mask = batches[batch_index]
            log_due = batch_index % config.log_every == 0
            step_fn = (
                compiled.train_with_stats
                if log_due and compiled.train_with_stats
                else compiled.train
            )
            local_batch = data.make_batch(train_split, indices[rows], mask[rows])
            state, metrics = step_fn(state, placement.put_batch(local_batch, config.batch_size))
            if placement.wait_every_step:
                jax.block_until_ready(metrics)
            pending.append(metrics)
            taken += 1
            hooks.on_progress(taken)
            stopped = _stop_agreed(hooks, placement, log_due)
            checkpoint_due = stopped or taken % checkpoint_every == 0 or taken == steps_to_take
            if not (log_due or checkpoint_due):
                continue
            fetched = jax.tree.map(host_value, pending)  # the loop's only host syncs are here
            step_seconds = (time.perf_counter() - resumed_at) / (taken - resumed_taken)
            pending.clear()
            _raise_if_nonfinite(config, train_split, state)
            correct += int(sum(m["correct"] for m in fetched))
            count += int(sum(m["count"] for m in fetched))
            test = evaluate(compiled.eval, state, test_batches)
            if log_due:
                hooks.on_log(
                    LogRecord(
                        step=taken,
                        epoch=epoch,
                        batch=batch_index,
                        images_seen=batch_index * config.batch_size,
                        loss=float(fetched[-1]["loss"]),
                        train_accuracy=correct / count,
                        test_accuracy=test.accuracy,
                        test_loss=test.loss,
                        grad_norm=_floats(fetched[-1].get("grad_norm")),
                        update_ratio=_floats(fetched[-1].get("update_ratio")),
                        step_seconds=step_seconds,
                    )
                )
            if checkpoint_due:
                after = _position_after(config.seed, epoch, batch_index, per_epoch, correct, count)
                hooks.on_checkpoint(state, after, test)
            resumed_at, resumed_taken = time.perf_counter(), taken
            if stopped:
                break
    state = jax.block_until_ready(state)
    train_seconds = time.perf_counter() - start
    _raise_if_nonfinite(config, train_split, state)
    return TrainResult(
        state=state,
        steps=taken,
        epochs=taken / per_epoch,
        position=_position_of_step(config.seed, taken, per_epoch),
        train_seconds=train_seconds,
        test=evaluate(compiled.eval, state, test_batches),
        stopped=stopped,
    )


def _stop_agreed(hooks: Hooks, placement: Placement, log_due: bool) -> bool:
    """Return whether to stop after this step.

    One process polls its stop request after every step. Several processes must stop
    after the same step, so they agree at log points only (a collective there).
    """
    if placement.num_processes == 1:
        return hooks.stop_requested()
    return log_due and any_process(hooks.stop_requested())


def _floats(values: dict[str, Any] | None) -> dict[str, float] | None:
    """Return a dict of fetched device scalars as Python floats (None stays None)."""
    return None if values is None else {key: float(value) for key, value in values.items()}


def _position_after(
    seed: int, epoch: int, batch_index: int, per_epoch: int, correct: int, count: int
) -> Position:
    """Return the position after training batch ``batch_index`` of ``epoch``."""
    if batch_index + 1 == per_epoch:
        return Position(epoch=epoch + 1, batch=0, seed=seed)
    return Position(epoch=epoch, batch=batch_index + 1, seed=seed, correct=correct, count=count)


def _position_of_step(seed: int, taken: int, per_epoch: int) -> Position:
    """Return the epoch and batch after ``taken`` steps (running counts not included)."""
    epoch, batch = divmod(taken, per_epoch)
    return Position(epoch=epoch, batch=batch, seed=seed)


def _raise_if_nonfinite(config: TrainConfig, split: data.Split, state: steps.TrainState) -> None:
    """Raise :class:`NonFiniteError` if a step of ``state`` went non-finite."""
    bad_step = int(host_value(state.nonfinite_step))
    if bad_step == 0:
        return
    per_epoch = data.steps_per_epoch(len(split), config.batch_size)
    epoch, index = divmod(bad_step - 1, per_epoch)
    details = describe_nonfinite(state, batch_of_step(config, split, bad_step))
    raise NonFiniteError(
        f"the loss or gradient is not finite at step {bad_step} (epoch {epoch}, batch "
        f"{index}): {details}",
        step=bad_step,
    )


def example_batches(
    config: TrainConfig, splits: dict[str, data.Split], placement: Placement
) -> tuple[steps.Batch, steps.Batch]:
    """Return one training and one evaluation batch of the shapes and layout the loop uses."""
    rows = placement.local_rows(config.batch_size)
    indices = np.zeros(config.batch_size, np.int64)[rows]
    mask = np.ones(config.batch_size, np.float32)[rows]
    train_batch = placement.put_batch(
        data.make_batch(splits["train"], indices, mask), config.batch_size
    )
    eval_batch = placed_eval_batches(splits["test"], config.eval_batch_size, placement)[0]
    return train_batch, eval_batch
