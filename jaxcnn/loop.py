"""The host-side loops: compile the steps, run the epochs, evaluate a split.

The loop is thin on purpose: it draws each epoch's order, feeds fixed-shape batches to
the compiled step and reads values back from the device only at log points, so the
host never waits for the device in between.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from jaxcnn import data, steps
from jaxcnn.config import TrainConfig

TrainFn = Callable[[steps.TrainState, steps.Batch], tuple[steps.TrainState, steps.Metrics]]
EvalFn = Callable[[steps.TrainState, steps.Batch], steps.Metrics]


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
    epoch's batches so far.
    """

    step: int
    epoch: int
    batch: int
    images_seen: int
    loss: float
    train_accuracy: float
    test_accuracy: float
    test_loss: float


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a finished training loop reports."""

    state: steps.TrainState
    steps: int
    epochs: float
    train_seconds: float
    test: EvalResult


def compile_steps(
    state: steps.TrainState, train_batch: steps.Batch, eval_batch: steps.Batch
) -> tuple[TrainFn, EvalFn, float]:
    """Compile ``train_step`` (state buffers donated) and ``eval_step`` ahead of time.

    Returns:
        The two compiled functions and the seconds spent compiling them.

    """
    start = time.perf_counter()
    train_fn = jax.jit(steps.train_step, donate_argnums=0).lower(state, train_batch).compile()
    eval_fn = jax.jit(steps.eval_step).lower(state, eval_batch).compile()
    return train_fn, eval_fn, time.perf_counter() - start


def evaluate(
    eval_fn: EvalFn, state: steps.TrainState, batches: Sequence[steps.Batch]
) -> EvalResult:
    """Return loss and accuracy of ``state`` over all ``batches`` (a whole split, padded)."""
    totals = jax.device_get([eval_fn(state, batch) for batch in batches])
    loss_sum = sum(float(t["loss_sum"]) for t in totals)
    correct = sum(int(t["correct"]) for t in totals)
    count = sum(int(t["count"]) for t in totals)
    return EvalResult(loss=loss_sum / count, accuracy=correct / count, correct=correct, count=count)


def total_steps(config: TrainConfig, num_train: int) -> int:
    """Return how many steps the run takes: every epoch, capped by ``max_steps``."""
    planned = config.epochs * data.steps_per_epoch(num_train, config.batch_size)
    return planned if config.max_steps is None else min(planned, config.max_steps)


def train(
    config: TrainConfig,
    splits: dict[str, data.Split],
    state: steps.TrainState,
    train_fn: TrainFn,
    eval_fn: EvalFn,
    on_log: Callable[[LogRecord], None],
) -> TrainResult:
    """Run the epochs of ``config`` from ``state``, calling ``on_log`` at every log point.

    A log point is every ``config.log_every``-th batch of an epoch, counting from 0 as
    the seed does; each one evaluates the whole test set.
    """
    train_split = splits["train"]
    test_batches = data.fixed_batches(splits["test"], config.eval_batch_size)
    steps_to_take = total_steps(config, len(train_split))
    taken = 0
    start = time.perf_counter()
    for epoch in range(config.epochs):
        if taken >= steps_to_take:
            break
        order = data.epoch_permutation(config.seed, epoch, len(train_split))
        pending: list[steps.Metrics] = []  # device values not read back yet
        correct = count = 0
        for batch_index, (indices, mask) in enumerate(data.batch_indices(order, config.batch_size)):
            if taken >= steps_to_take:
                break
            state, metrics = train_fn(state, data.make_batch(train_split, indices, mask))
            pending.append(metrics)
            taken += 1
            if batch_index % config.log_every == 0:
                fetched = jax.device_get(pending)  # the only host sync of the loop
                pending.clear()
                correct += int(sum(m["correct"] for m in fetched))
                count += int(sum(m["count"] for m in fetched))
                test = evaluate(eval_fn, state, test_batches)
                on_log(
                    LogRecord(
                        step=taken,
                        epoch=epoch,
                        batch=batch_index,
                        images_seen=batch_index * config.batch_size,
                        loss=float(fetched[-1]["loss"]),
                        train_accuracy=correct / count,
                        test_accuracy=test.accuracy,
                        test_loss=test.loss,
                    )
                )
    state = jax.block_until_ready(state)
    train_seconds = time.perf_counter() - start
    steps_in_epoch = data.steps_per_epoch(len(train_split), config.batch_size)
    return TrainResult(
        state=state,
        steps=taken,
        epochs=taken / steps_in_epoch,
        train_seconds=train_seconds,
        test=evaluate(eval_fn, state, test_batches),
    )


def example_batches(
    config: TrainConfig, splits: dict[str, data.Split]
) -> tuple[steps.Batch, steps.Batch]:
    """Return one training and one evaluation batch of the shapes the loop will use."""
    indices = np.zeros(config.batch_size, np.int64)
    train_batch = data.make_batch(splits["train"], indices, np.ones(config.batch_size, np.float32))
    eval_batch = data.fixed_batches(splits["test"], config.eval_batch_size)[0]
    return train_batch, eval_batch
