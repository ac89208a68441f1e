"""Compiling the steps ahead of time: shardings, buffer donation, chunks and loop kind.

This is the one jitted update of the run (big_vision's pattern): :func:`compile_steps`
compiles :func:`jaxcnn.training.step.train_step` (and its variants) for the devices'
placement once, before the loop starts, so the loop only calls compiled functions.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future

import jax
import numpy as np

from jaxcnn import data
from jaxcnn.config import TrainConfig
from jaxcnn.training.evaluation import EvalFn, placed_eval_batches
from jaxcnn.training.parallel import Placement
from jaxcnn.training.state import TrainState
from jaxcnn.training.step import (
    Batch,
    Metrics,
    eval_step,
    gradient_statistics,
    in_chunks,
    no_extra_metrics,
    scan_steps,
    train_step,
)

StepFn = Callable[[TrainState, Batch], tuple[TrainState, Metrics]]
ScanFn = Callable[..., tuple[TrainState, Metrics]]


@dataclasses.dataclass(frozen=True)
class CompiledSteps:
    """The compiled step functions of a run.

    Attributes:
        step: the training step.
        step_with_grad_stats: the training step that also returns per-layer gradient
            norms and update ratios (``--log-grads``), used at log points only; or None.
        eval: the evaluation step.
        seconds: time spent compiling them; in a job
            (:func:`jaxcnn.training.job.prepare_start_and_steps`), also compiling and
            running a new run's initialisation, which compiles beside them.
        scans: for the compiled loop (``--loop scan``), :func:`scan_steps` compiled for
            each (number of steps, with gradient statistics) the run needs; else None.
    """

    step: StepFn
    step_with_grad_stats: StepFn | None
    eval: EvalFn
    seconds: float
    scans: dict[tuple[int, bool], ScanFn] | None = None


def step_function(chunks: int, with_grad_stats: bool) -> StepFn:
    """Return :func:`train_step` computing each batch in ``chunks`` parts, measuring or not."""
    grad_fn = in_chunks(chunks)
    extra_metrics = (
        functools.partial(gradient_statistics, grad_fn=grad_fn)
        if with_grad_stats
        else no_extra_metrics
    )
    return functools.partial(train_step, grad_fn=grad_fn, extra_metrics=extra_metrics)


def compile_steps(
    state: TrainState,
    train_batch: Batch,
    eval_batch: Batch,
    placement: Placement,
    log_grads: bool = False,
    scan_shapes: Sequence[tuple[int, bool]] = (),
    train_split: data.Split | None = None,
    chunks: int = 1,
    compiler: Executor | None = None,
) -> CompiledSteps:
    """Compile the training and evaluation steps ahead of time.

    With ``scan_shapes`` (number of steps, with gradient statistics), also compile
    :func:`scan_steps` for each, for the compiled loop over ``train_split``. Every step
    computes its batch in ``chunks`` independent parts (see :func:`resolve_chunks`). The
    training steps take over the old state's buffers (donation) when they compute the
    batch whole; see :func:`donated_state`.

    All are compiled for ``placement``: the state replicated, the batch split along
    the mesh's ``data`` axis, so that with several devices XLA sums the gradients with
    an all-reduce. With ``log_grads`` the step that also measures gradients is compiled
    too, apart, so the steps between log points run exactly the plain step. Under
    ``jax_debug_nans`` the jitted functions are returned uncompiled, since the checks
    that find the failing operation work on those.

    ``state`` may hold arrays or only their shapes (``jax.ShapeDtypeStruct``). Each
    function is traced and lowered here, one after another (Python), and compiled by
    ``compiler``, if given, while the next is traced (XLA, outside Python's lock).
    """
    start = time.perf_counter()
    shardings = {
        "in_shardings": (placement.replicated, placement.batch_sharding),
        "out_shardings": (placement.replicated, placement.replicated),
    }
    donate = donated_state(chunks)
    functions = {
        "step": jax.jit(step_function(chunks, False), donate_argnums=donate, **shardings),
        "step_with_grad_stats": jax.jit(
            step_function(chunks, True), donate_argnums=donate, **shardings
        )
        if log_grads
        else None,
        "eval": jax.jit(
            functools.partial(eval_step, chunks=min(chunks, eval_batch["mask"].shape[0])),
            in_shardings=shardings["in_shardings"],
            out_shardings=placement.replicated,
        ),
    }
    if not jax.config.jax_debug_nans:
        batches = {"step": train_batch, "step_with_grad_stats": train_batch, "eval": eval_batch}
        functions = {
            name: None
            if function is None
            else _compile(function.lower(state, batches[name]), compiler)
            for name, function in functions.items()
        }
    scans = {
        shape: _compile(
            _lower_scan(state, train_split, train_batch, placement, *shape, chunks), compiler
        )
        for shape in sorted(set(scan_shapes))
    }
    functions = {name: _result(function) for name, function in functions.items()}
    scans = {shape: compiling.result() for shape, compiling in scans.items()}
    return CompiledSteps(**functions, seconds=time.perf_counter() - start, scans=scans or None)


def _compile(lowered: jax.stages.Lowered, compiler: Executor | None) -> Future:
    """Return the compilation of ``lowered``: running in ``compiler``, or done here."""
    if compiler is not None:
        return compiler.submit(lowered.compile)
    done: Future = Future()
    done.set_result(lowered.compile())
    return done


def _result(function: Future | StepFn | EvalFn | None) -> StepFn | EvalFn | None:
    """Return a compiled function, waiting for it if it is still compiling."""
    return function.result() if isinstance(function, Future) else function


def donated_state(chunks: int) -> tuple[int, ...]:
    """Return ``donate_argnums`` for a training step that computes its batch in ``chunks``.

    A step computing its batch whole gives the old state's buffers to the new state
    (argument 0). One in several chunks does not: on XLA:CPU, donation made the step in
    4 chunks slower (10.2 against 8.6 ms at batch 64 on this project's machines) while
    the whole step was the same with or without it (12.3 against 12.6 ms).
    """
    return (0,) if chunks == 1 else ()


def _lower_scan(
    state: TrainState,
    split: data.Split,
    train_batch: Batch,
    placement: Placement,
    length: int,
    with_grad_stats: bool,
    chunks: int,
) -> jax.stages.Lowered:
    """Lower :func:`scan_steps` for ``length`` steps over ``split`` kept on the devices."""
    replicated, columns = placement.replicated, placement.step_rows_sharding
    function = jax.jit(
        functools.partial(
            scan_steps,
            step_fn=step_function(chunks, False),
            last_step_fn=step_function(chunks, with_grad_stats),
        ),
        donate_argnums=donated_state(chunks),
        in_shardings=(replicated, replicated, replicated, columns, columns),
        out_shardings=(replicated, replicated),
    )
    images = jax.ShapeDtypeStruct(split.images.shape, split.images.dtype, sharding=replicated)
    labels = jax.ShapeDtypeStruct(split.labels.shape, split.labels.dtype, sharding=replicated)
    batch_size = train_batch["mask"].shape[0]
    rows = jax.ShapeDtypeStruct((length, batch_size), np.int32, sharding=columns)
    masks = jax.ShapeDtypeStruct((length, batch_size), np.float32, sharding=columns)
    return function.lower(state, images, labels, rows, masks)


def resolve_loop(kind: str) -> str:
    """Return ``python`` or ``scan`` for ``kind`` (one of :data:`LOOPS`) on this backend."""
    if kind != "auto":
        return kind
    return "python" if jax.default_backend() == "cpu" else "scan"


#: Parts per batch on a CPU when ``--chunks`` is auto. XLA:CPU runs each convolution on
#: one core but runs independent ones side by side, so a batch computed as independent
#: parts (:func:`jaxcnn.training.step.in_chunks`) keeps both cores of this project's
#: machines busy: the tutorial's step at batch 64 took 13.1 ms whole, 10.9 ms in 2 parts,
#: 8.8 ms in 4, and 11.0 ms in 8; the forward pass over the test set, in batches of 1000,
#: took 843 ms whole and 560 ms in 4 parts.
CPU_CHUNKS = 4


def resolve_chunks(
    requested: int | None, state: TrainState, placement: Placement, batch_size: int
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


def example_batches(
    config: TrainConfig, splits: dict[str, data.Split], placement: Placement
) -> tuple[Batch, Batch]:
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
