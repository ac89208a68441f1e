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
StretchFn = Callable[..., tuple[steps.TrainState, steps.Metrics]]


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
        stretches: for the compiled loop (``--loop scan``), ``steps.train_stretch``
            compiled for each (number of steps, with gradient statistics) the run's
            stretches need; None for the Python loop.
    """

    train: TrainFn
    train_with_stats: TrainFn | None
    eval: EvalFn
    seconds: float
    stretches: dict[tuple[int, bool], StretchFn] | None = None


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
    stretch_shapes: Sequence[tuple[int, bool]] = (),
    train_split: data.Split | None = None,
    chunks: int = 1,
) -> CompiledSteps:
    """Compile ``train_step`` and ``eval_step`` ahead of time.

    With ``stretch_shapes`` (number of steps, with gradient statistics), also compile
    ``steps.train_stretch`` for each, for the compiled loop over ``train_split``. Every
    step computes its batch in ``chunks`` independent parts (see :func:`resolve_chunks`).
    The training steps take over the old state's buffers (donation) when they compute
    the batch whole; see :func:`donated_state`.

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
    eval_chunks = min(chunks, eval_batch["mask"].shape[0])
    donate = donated_state(chunks)
    functions = {
        "train": jax.jit(
            functools.partial(steps.train_step, chunks=chunks), donate_argnums=donate, **shardings
        ),
        "train_with_stats": jax.jit(
            functools.partial(steps.train_step, with_grad_stats=True, chunks=chunks),
            donate_argnums=donate,
            **shardings,
        )
        if log_grads
        else None,
        "eval": jax.jit(
            functools.partial(steps.eval_step, chunks=eval_chunks),
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
    stretches = (
        {
            shape: _compile_stretch(state, train_split, train_batch, placement, *shape, chunks)
            for shape in sorted(set(stretch_shapes))
        }
        if stretch_shapes
        else None
    )
    return CompiledSteps(**functions, seconds=time.perf_counter() - start, stretches=stretches)


def donated_state(chunks: int) -> tuple[int, ...]:
    """Return ``donate_argnums`` for a training step that computes its batch in ``chunks``.

    A step computing its batch whole gives the old state's buffers to the new state
    (argument 0). One in several chunks does not: on XLA:CPU, donation made the step in
    4 chunks slower (10.2 against 8.6 ms at batch 64 on this project's machines) while
    the whole step was the same with or without it (12.3 against 12.6 ms).
    """
    return (0,) if chunks == 1 else ()


def _compile_stretch(
    state: steps.TrainState,
    split: data.Split,
    train_batch: steps.Batch,
    placement: Placement,
    length: int,
    with_grad_stats: bool,
    chunks: int,
) -> StretchFn:
    """Compile ``steps.train_stretch`` for ``length`` steps over ``split`` kept on the devices."""
    replicated, columns = placement.replicated, placement.stretch_sharding
    function = jax.jit(
        functools.partial(steps.train_stretch, with_grad_stats=with_grad_stats, chunks=chunks),
        donate_argnums=donated_state(chunks),
        in_shardings=(replicated, replicated, replicated, columns, columns),
        out_shardings=(replicated, replicated),
    )
    images = jax.ShapeDtypeStruct(split.images.shape, split.images.dtype, sharding=replicated)
    labels = jax.ShapeDtypeStruct(split.labels.shape, split.labels.dtype, sharding=replicated)
    batch_size = train_batch["mask"].shape[0]
    rows = jax.ShapeDtypeStruct((length, batch_size), np.int32, sharding=columns)
    masks = jax.ShapeDtypeStruct((length, batch_size), np.float32, sharding=columns)
    return function.lower(state, images, labels, rows, masks).compile()


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


@dataclasses.dataclass(frozen=True)
class Stretch:
    """Consecutive steps of one epoch, from batch ``first`` to ``last`` inclusive.

    The loop syncs with the host only after a stretch: its last batch is a log point,
    a checkpoint is due, training ends, or the epoch does.
    """

    epoch: int
    first: int
    last: int

    @property
    def length(self) -> int:
        """The number of steps in the stretch."""
        return self.last - self.first + 1


def plan_stretches(
    config: TrainConfig, per_epoch: int, taken: int, steps_to_take: int
) -> list[Stretch]:
    """Return the stretches that take a run from ``taken`` steps to ``steps_to_take``."""
    checkpoint_every = config.checkpoint_every or per_epoch
    plan = []
    while taken < steps_to_take:
        epoch, first = divmod(taken, per_epoch)
        last = first
        while not (
            last % config.log_every == 0
            or (taken + last - first + 1) % checkpoint_every == 0
            or taken + last - first + 1 == steps_to_take
            or last == per_epoch - 1
        ):
            last += 1
        plan.append(Stretch(epoch, first, last))
        taken += last - first + 1
    return plan


def stretch_shapes(
    config: TrainConfig, num_train: int, position: Position
) -> list[tuple[int, bool]]:
    """Return the (length, with gradient statistics) of every stretch the run will take."""
    per_epoch = data.steps_per_epoch(num_train, config.batch_size)
    taken = position.epoch * per_epoch + position.batch
    plan = plan_stretches(config, per_epoch, taken, total_steps(config, num_train))
    return sorted({(s.length, config.log_grads and s.last % config.log_every == 0) for s in plan})


def resolve_loop(kind: str) -> str:
    """Return ``python`` or ``scan`` for ``kind`` (one of :data:`LOOPS`) on this backend."""
    if kind != "auto":
        return kind
    return "python" if jax.default_backend() == "cpu" else "scan"


#: Parts per batch on a CPU when ``--chunks`` is auto. XLA:CPU runs each convolution on
#: one core but runs independent ones side by side, so a batch computed as independent
#: parts (``steps.value_and_grad_in_chunks``) keeps both cores of this project's machines
#: busy: the seed's step at batch 64 took 13.1 ms whole, 10.9 ms in 2 parts, 8.8 ms in 4,
#: and 11.0 ms in 8; the forward pass over the test set, in batches of 1000, took
#: 843 ms whole and 560 ms in 4 parts.
CPU_CHUNKS = 4


def resolve_chunks(
    requested: int | None, state: steps.TrainState, placement: Placement, batch_size: int
) -> int:
    """Return the parts each batch is computed in: ``requested``, or else chosen here.

    The choice is :data:`CPU_CHUNKS` (at most one part per example) for a model without
    batch statistics on one CPU device, and 1 everywhere else: a GPU or TPU fills its
    cores from one batch, several devices already split the batch, and BatchNorm needs
    the statistics of the whole batch.
    """
    if requested is not None:
        return requested
    devices = list(placement.mesh.devices.flat)
    on_one_cpu = len(devices) == 1 and devices[0].platform == "cpu"
    return min(CPU_CHUNKS, batch_size) if on_one_cpu and not state.model_state else 1


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
    ends, and when a stop is requested. The steps between two of these points (a
    :class:`Stretch`) run one by one from Python, or, when ``compiled.stretches`` is
    set, as one compiled loop over the training split kept on the devices.

    Raises:
        NonFiniteError: a step's loss or gradient was not finite; the state was frozen
            before that step, and no checkpoint is written of it.
    """
    train_split = splits["train"]
    test_batches = placed_eval_batches(splits["test"], config.eval_batch_size, placement)
    per_epoch = data.steps_per_epoch(len(train_split), config.batch_size)
    checkpoint_every = config.checkpoint_every or per_epoch
    steps_to_take = total_steps(config, len(train_split))
    taken = position.epoch * per_epoch + position.batch
    correct, count = position.correct, position.count
    run_stretch = (
        _python_stretches(config, train_split, compiled, hooks, placement)
        if compiled.stretches is None
        else _compiled_stretches(config, train_split, compiled, hooks, placement)
    )
    stopped = False
    pending: list[steps.Metrics] = []  # device values not read back yet
    start = time.perf_counter()
    resumed_at, resumed_taken = start, taken  # after the last sync point's host work
    for stretch in plan_stretches(config, per_epoch, taken, steps_to_take):
        if stretch.first == 0 and stretch.epoch != position.epoch:
            correct = count = 0
            pending.clear()
        state, done, stopped = run_stretch(state, stretch, pending)
        taken += done
        batch_index = stretch.first + done - 1
        log_due = batch_index % config.log_every == 0
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
                    epoch=stretch.epoch,
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
            after = _position_after(
                config.seed, stretch.epoch, batch_index, per_epoch, correct, count
            )
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


StretchRunner = Callable[
    [steps.TrainState, Stretch, list[steps.Metrics]], tuple[steps.TrainState, int, bool]
]


@functools.lru_cache(maxsize=2)
def _epoch_batches(
    seed: int, batch_size: int, epoch: int, num_examples: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return ``(indices, mask)`` of every batch of ``epoch``, in order (the last two kept)."""
    order = data.epoch_permutation(seed, epoch, num_examples)
    return list(data.batch_indices(order, batch_size))


def _python_stretches(
    config: TrainConfig,
    split: data.Split,
    compiled: CompiledSteps,
    hooks: Hooks,
    placement: Placement,
) -> StretchRunner:
    """Return a runner that takes a stretch's steps one by one, polling for a stop after each.

    The runner appends each step's metrics to ``pending`` and returns the new state,
    the number of steps taken (fewer than the stretch's if a stop came) and whether
    to stop.
    """
    rows = placement.local_rows(config.batch_size)

    def run(
        state: steps.TrainState, stretch: Stretch, pending: list[steps.Metrics]
    ) -> tuple[steps.TrainState, int, bool]:
        batches = _epoch_batches(config.seed, config.batch_size, stretch.epoch, len(split))
        taken = stretch.epoch * len(batches) + stretch.first
        for batch_index in range(stretch.first, stretch.last + 1):
            indices, mask = batches[batch_index]
            log_due = batch_index % config.log_every == 0
            step_fn = (
                compiled.train_with_stats
                if log_due and compiled.train_with_stats
                else compiled.train
            )
            local_batch = data.make_batch(split, indices[rows], mask[rows])
            state, metrics = step_fn(state, placement.put_batch(local_batch, config.batch_size))
            if placement.wait_every_step:
                jax.block_until_ready(metrics)
            pending.append(metrics)
            taken += 1
            hooks.on_progress(taken)
            if _stop_agreed(hooks, placement, log_due):
                return state, batch_index - stretch.first + 1, True
        return state, stretch.length, False

    return run


def _compiled_stretches(
    config: TrainConfig,
    split: data.Split,
    compiled: CompiledSteps,
    hooks: Hooks,
    placement: Placement,
) -> StretchRunner:
    """Return a runner that takes each stretch as one compiled loop (``steps.train_stretch``).

    The training split is copied to every device once; each stretch sends only its
    batches' indices and masks. A stop is polled after each stretch.
    """
    resident = placement.put_state({"images": split.images, "labels": split.labels})
    rows = placement.local_rows(config.batch_size)

    def run(
        state: steps.TrainState, stretch: Stretch, pending: list[steps.Metrics]
    ) -> tuple[steps.TrainState, int, bool]:
        epoch = _epoch_batches(config.seed, config.batch_size, stretch.epoch, len(split))
        batches = epoch[stretch.first : stretch.last + 1]
        local = {
            "indices": np.stack([indices[rows] for indices, _ in batches]).astype(np.int32),
            "masks": np.stack([mask[rows] for _, mask in batches]),
        }
        placed = placement.put_stretch(local, config.batch_size)
        with_stats = config.log_grads and stretch.last % config.log_every == 0
        stretch_fn = compiled.stretches[(stretch.length, with_stats)]
        state, metrics = stretch_fn(
            state, resident["images"], resident["labels"], placed["indices"], placed["masks"]
        )
        pending.append(metrics)
        hooks.on_progress(stretch.epoch * len(epoch) + stretch.last + 1)
        is_log_point = stretch.last % config.log_every == 0
        return state, stretch.length, _stop_agreed(hooks, placement, is_log_point)

    return run


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
    test, size = splits["test"], placement.round_up(config.eval_batch_size)
    first_rows = data.Split(test.images[:size], test.labels[:size])  # not the whole split
    eval_batch = placed_eval_batches(first_rows, config.eval_batch_size, placement)[0]
    return train_batch, eval_batch
