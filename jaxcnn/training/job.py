"""A training job: everything ``python -m jaxcnn.train`` does around the loop.

:func:`run_job` joins the devices (and processes), checks and locks the work dir,
restores the newest checkpoint, loads the data, compiles the steps (and a new run's
initial state, side by side: :func:`prepare_start_and_steps`), runs the loop
(:func:`jaxcnn.training.loop.train_and_evaluate`) with its log lines, progress bar,
TensorBoard and checkpoints, records the run's status and writes its summary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax

from jaxcnn import data, tb
from jaxcnn.compilation_cache import counting_cache_hits
from jaxcnn.config import TrainConfig
from jaxcnn.errors import EXIT_NONFINITE, EXIT_WRITE, NonFiniteError, UsageError, WriteError
from jaxcnn.training import parallel, progress, workdir
from jaxcnn.training.checkpoints import CHECKPOINT_DIR, Checkpoints
from jaxcnn.training.compile import (
    CompiledSteps,
    compile_steps,
    example_batches,
    resolve_chunks,
    resolve_loop,
)
from jaxcnn.training.evaluation import EvalResult
from jaxcnn.training.loop import Hooks, LogRecord, LoopSetup, TrainResult, train_and_evaluate
from jaxcnn.training.report import (
    RunFacts,
    format_grad_line,
    format_log_line,
    metrics_fields,
    write_summary,
)
from jaxcnn.training.resources import check_batch_sizes, check_memory
from jaxcnn.training.scan_loop import scan_shapes, train_and_evaluate_scanned
from jaxcnn.training.signals import StopRequest, stop_on_signals
from jaxcnn.training.state import TrainState, new_initialisation, state_shapes
from jaxcnn.training.timetable import Position, Timetable


@dataclasses.dataclass(frozen=True)
class JobOptions:
    """What a job needs besides its config: where its files go, and what it runs on.

    The meaning of each is the help of the ``python -m jaxcnn.train`` flag of its name.
    """

    workdir: Path | None
    override: bool
    show_progress: bool
    debug_nans: bool
    data_dir: str | None
    manual_dir: str | None
    devices: int | None
    coordinator: str | None
    num_processes: int
    process_id: int
    command: tuple[str, ...]  # the command line, to say how to resume


@dataclasses.dataclass(frozen=True)
class StartPoint:
    """A checkpoint to continue from: its state, its position in the data, its step."""

    state: TrainState
    position: Position
    step: int


def run_job(config: TrainConfig, options: JobOptions) -> int:
    """Run the training job of ``config``; return the process exit code.

    In a multi-process run every process calls this; only process 0 prints and writes
    the work dir's files, and all of them write their part of each checkpoint.
    """
    if options.debug_nans:
        jax.config.update("jax_debug_nans", True)
    placement = create_placement(options, config)
    primary = jax.process_index() == 0
    requested = options.workdir
    with contextlib.ExitStack() as context:
        saved = workdir.saved_config(requested, config, options.override)
        if saved is not None and primary:  # a run is there: lock it before reading it
            context.enter_context(workdir.exclusive(requested))
        print(f"backend: {jax.default_backend()}, {describe_devices(placement)}", flush=True)
        restored = restore_latest(requested, config, placement)
        if saved is not None:  # a damaged log is refused before anything compiles or is written
            workdir.read_metrics(requested)
        if restored or saved:
            print(describe_start(restored, requested), flush=True)
        splits = data.load_dataset(
            config.dataset,
            data.resolve_data_dir(options.data_dir),
            data.resolve_manual_dir(options.manual_dir),
        )
        check_batch_sizes(config, splits)
        if restored is not None:
            finished = finished_summary(requested, config, restored, len(splits["train"]))
            if finished is not None:  # rerun of a finished run: its files stay as they are
                print(describe_finished(requested, finished), flush=True)
                return 0
        start, steps = prepare_start_and_steps(config, splits, restored, placement)  # no write yet
        path = requested
        stop = StopRequest()
        try:
            if primary:
                path = workdir.create(requested, config)
                if saved is None:
                    context.enter_context(workdir.exclusive(path))
                workdir.save_config(path, config, saved, start.step)
                workdir.truncate_metrics(path, start.step)
                tb.truncate(path / tb.TB_DIR, start.step)
            parallel.barrier("workdir ready")
            status = (
                workdir.recording_status(path, start.step) if primary else contextlib.nullcontext()
            )
            with status, stop_on_signals(stop):
                result = run_training(
                    config, splits, path, start, steps, stop, placement, options.show_progress
                )
                if primary:
                    stopped_by = signal_name(stop) if result.stopped else None
                    workdir.record_end(path, result.steps, stopped_by, stop.exit_code)
        except (NonFiniteError, FloatingPointError) as error:  # the latter: --debug-nans
            print(f"{options.command[0]}: error: {nonfinite_message(error, path)}", file=sys.stderr)
            return EXIT_NONFINITE
        except WriteError as error:
            print(
                f"{options.command[0]}: error: {write_failure_message(error, path, options)}",
                file=sys.stderr,
            )
            return EXIT_WRITE
        if result.stopped:
            print(
                f"stopped by {signal_name(stop)} after step {result.steps} (epoch "
                f"{result.position.epoch}, batch {result.position.batch}); checkpoint saved in "
                f"{path / CHECKPOINT_DIR}. Resume with: {resume_command(options, path)}",
                flush=True,
            )
            return stop.exit_code
    return 0


@dataclasses.dataclass(frozen=True)
class JobSteps:
    """The compiled steps of a job, and the choices they were compiled with."""

    compiled: CompiledSteps
    loop_kind: str
    chunks: int


#: Compilations run side by side at the start of a job. In one process, from the end of
#: the imports to the first step of the tutorial's job, one after another took 6.7-7.4 s
#: with an empty compilation cache and 1.7-1.9 s with a full one; in 2 threads 5.5-6.1 s
#: and 1.3-1.6 s; in 3 as in 2 (this project's AVX2 EPYC, 2 cores, in its slow state).
#: Whole processes, start to first step, by ``experiments/start_ab.py``: see
#: experiments/README.md.
COMPILE_THREADS = 2


def prepare_start_and_steps(
    config: TrainConfig,
    splits: dict[str, data.Split],
    restored: StartPoint | None,
    placement: parallel.Placement,
) -> tuple[StartPoint, JobSteps]:
    """Compile the job's steps (and a new run's initial state), say so, check the memory.

    This is where the tutorial's ``net = CNN()`` and ``optimizer = optim.Adam(...)``
    happen for a new run: :func:`jaxcnn.training.state.new_initialisation` traces
    ``model.init`` and ``tx.init``. A resumed run starts from its ``restored`` point.

    Python traces and lowers each function on this thread, one after another; XLA
    compiles them in :data:`COMPILE_THREADS` threads, each while the next is traced: a
    new run's initialisation first, then the steps, traced against its shapes
    (:func:`compile_steps`).

    Returns:
        The start point (a new run's initial state, placed on the devices) and the steps.

    Raises:
        UsageError: the compiled steps and their data need more memory than there is
            (see :mod:`jaxcnn.training.resources`).
    """
    initialisation = None if restored else new_initialisation(config)
    state = restored.state if restored else initialisation.state_shapes(placement.replicated)
    position = restored.position if restored else Position(0, 0, config.seed)
    loop_kind = resolve_loop(config.loop)
    chunks = resolve_chunks(config.chunks, state, placement, config.batch_size)
    num_train = len(splits["train"])
    compiler, wait_for_compiler = ThreadPoolExecutor(COMPILE_THREADS), True
    try:
        with counting_cache_hits() as cache:
            began = time.perf_counter()
            compiling_init = None if restored else compiler.submit(initialisation.compile)
            compiled = compile_steps(
                state,
                *example_batches(config, splits, placement),
                placement,
                config.log_grads,
                scan_shapes=scan_shapes(config, num_train, position) if loop_kind == "scan" else (),
                train_split=splits["train"],
                chunks=chunks,
                compiler=compiler,
            )
            start = restored or StartPoint(
                placement.replicate(initialisation.run(compiling_init.result())), position, 0
            )
            compiled = dataclasses.replace(compiled, seconds=time.perf_counter() - began)
    except KeyboardInterrupt:  # Ctrl-C: the compilations in flight end with the process
        wait_for_compiler = False
        raise
    finally:  # on Ctrl-C or an error, drop the compilations not yet started
        compiler.shutdown(wait=wait_for_compiler, cancel_futures=True)
    print(
        f"compiled {'' if restored else 'the initial state, '}train and eval steps in "
        f"{compiled.seconds:.2f} s ({loop_kind} loop, {chunks} chunk{'s' if chunks > 1 else ''} "
        f"per batch; {cache.describe()})",
        flush=True,
    )
    check_memory(config, splits, compiled, start.state, placement)
    return start, JobSteps(compiled, loop_kind, chunks)


def run_training(
    config: TrainConfig,
    splits: dict[str, data.Split],
    path: Path,
    start: StartPoint,
    steps: JobSteps,
    stop: StopRequest,
    placement: parallel.Placement,
    show_progress: bool = False,
) -> TrainResult:
    """Train from ``start`` with the compiled ``steps``, logging and checkpointing into ``path``.

    Each log record becomes a log line (above a progress bar per epoch on a terminal,
    with ``show_progress``), a line of ``metrics.jsonl`` and TensorBoard scalars.
    """
    compiled, num_train = steps.compiled, len(splits["train"])
    timetable = Timetable.of(config, num_train)
    checkpoints = Checkpoints(path, keep=config.keep)
    board = tb.Board(path / tb.TB_DIR, config)  # opens files lazily: in process 0 only
    primary = jax.process_index() == 0
    display = progress.for_stream(
        show_progress,
        sys.stdout,
        timetable.steps_per_epoch,
        timetable.total_steps,
        timetable.steps_before(start.position.epoch, start.position.batch),
    )

    def on_log(record: LogRecord) -> None:
        display.write(format_log_line(record, num_train, timetable.steps_per_epoch))
        if record.grad_norm is not None:
            display.write(format_grad_line(record))
        display.show_loss(record.loss)
        if primary:
            workdir.append_metrics(path, metrics_fields(record))
            board.write(record)

    def on_checkpoint(state: TrainState, after: Position, test: EvalResult | None) -> None:
        checkpoints.save(state, after, None if test is None else test.accuracy)
        board.cut()  # a resumed run drops the event files after its checkpoint (jaxcnn.tb)

    hooks = Hooks(
        on_log,
        on_checkpoint,
        stop_requested=stop,
        on_progress=display.advance,
        on_log_arrays=board.write_arrays if primary else Hooks.on_log_arrays,
    )
    loop = train_and_evaluate_scanned if steps.loop_kind == "scan" else train_and_evaluate
    setup = LoopSetup(config, splits, compiled, hooks, placement)
    try:
        result = loop(setup, start.state, start.position)
    finally:
        display.close()
        board.close()
        checkpoints.close()
    if not result.stopped and primary:
        facts = RunFacts(compiled.seconds, steps.loop_kind, steps.chunks, placement)
        write_summary(path, config, result, facts)
    return result


def create_placement(options: JobOptions, config: TrainConfig) -> parallel.Placement:
    """Join the multi-process run if one is asked for; return the devices' placement.

    Raises:
        UsageError: the process flags are inconsistent, a multi-process run has no
            --workdir, or the batch size does not split among the devices.
    """
    if options.process_id != 0 and options.num_processes == 1 and not options.coordinator:
        raise UsageError(
            f"--process-id {options.process_id} is for a multi-process run; give "
            "--num-processes and --coordinator HOST:PORT too"
        )
    if options.num_processes != 1 or options.coordinator:
        if not options.coordinator:
            raise UsageError(
                f"--num-processes {options.num_processes} needs --coordinator HOST:PORT"
            )
        if not options.workdir:
            raise UsageError(
                "--coordinator: a multi-process run needs --workdir, a folder every process "
                "can reach"
            )
        if options.process_id != 0:
            discard_stdout()  # only process 0 prints; errors still reach stderr
        parallel.initialize_distributed(
            options.coordinator, options.num_processes, options.process_id
        )
    placement = parallel.create_placement(options.devices)
    placement.check_batch_size("--batch-size", config.batch_size)
    return placement


def discard_stdout() -> None:
    """Send this process's standard output, Python's and native libraries', to the null device."""
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def restore_latest(
    path: Path | None, config: TrainConfig, placement: parallel.Placement
) -> StartPoint | None:
    """Return the newest checkpoint in ``path`` to continue from, placed on the devices.

    Raises:
        UsageError: ``path/checkpoints`` is there but is not a folder; starting afresh
            would write over the run's files.
    """
    if path is None:
        return None
    folder = path / CHECKPOINT_DIR
    if folder.exists() and not folder.is_dir():
        raise UsageError(
            f"{folder} is not a folder; a run keeps its checkpoints there: move it away"
        )
    if not folder.is_dir():
        return None
    checkpoints = Checkpoints(path, read_only=True)
    try:
        step = checkpoints.latest_step()
        if step is None:
            return None
        like = state_shapes(config, placement.replicated)
        state, position = checkpoints.restore(step, like=like)
    finally:
        checkpoints.close()
    if position.seed != config.seed:
        raise UsageError(
            f"checkpoint step {step} in {path} was written with --seed {position.seed}; "
            "its data order cannot continue under another seed"
        )
    return StartPoint(state=state, position=position, step=step)


def finished_summary(
    path: Path, config: TrainConfig, restored: StartPoint, num_train: int
) -> dict[str, Any] | None:
    """Return the summary of the run in ``path`` if it has taken every step ``config`` asks for.

    That is: its newest checkpoint is at the run's last step, and ``summary.json`` and
    ``status.json`` say that it finished there. A run that stopped at its last step before
    writing those two files gets None, so that the job writes them.

    Raises:
        UsageError: the run is already past the steps ``config`` asks for (a lower
            --epochs or --max-steps than it was trained with); going on would train nothing
            and write over its summary.
    """
    total_steps = Timetable.of(config, num_train).total_steps
    if restored.step > total_steps:
        asked = f"--epochs {config.epochs}" + (
            f", --max-steps {config.max_steps}" if config.max_steps is not None else ""
        )
        raise UsageError(
            f"--workdir {str(path)!r} holds a run already at step {restored.step}, past the "
            f"{total_steps} steps of {asked}; ask for more steps to train on, or give a new "
            "--workdir"
        )
    if restored.step < total_steps:
        return None
    summary = workdir.read_json(path / workdir.SUMMARY) or {}
    status = workdir.read_json(path / workdir.STATUS) or {}
    if summary.get("steps") != total_steps or status.get("status") != workdir.FINISHED:
        return None
    return summary


def describe_finished(path: Path, summary: dict[str, Any]) -> str:
    """Say that the run in ``path`` has nothing left to train, and how to train on."""
    accuracy = summary.get("test_accuracy")
    reached = f" (test accuracy {100 * accuracy:.2f}%)" if isinstance(accuracy, float) else ""
    return (
        f"nothing to train: the run in {path} finished its {summary['steps']} steps already"
        f"{reached}; its files are unchanged. To train on, raise --epochs or --max-steps"
    )


def signal_name(stop: StopRequest) -> str:
    """Return the name of the signal that stopped the run (SIGTERM if another process got it)."""
    return signal.Signals(stop.exit_code - 128).name


def resume_command(options: JobOptions, path: Path) -> str:
    """Return the command line that continues this run."""
    prog, *argv = options.command
    words = argv if options.workdir else [*argv, "--workdir", str(path)]
    return " ".join([prog, *map(shlex.quote, words)])


def describe_devices(placement: parallel.Placement) -> str:
    """Say which devices the run uses, and in how many processes."""
    devices = list(placement.mesh.devices.flat)
    processes = f" in {placement.num_processes} processes" if placement.num_processes > 1 else ""
    return f"devices: {devices}{processes}"


def describe_start(start: StartPoint | None, path: Path) -> str:
    """Say where a run in an existing work dir continues from."""
    if start is None:
        return f"no checkpoint in {path} yet: starting from step 0"
    return (
        f"resuming from the checkpoint at step {start.step} (epoch {start.position.epoch}, "
        f"batch {start.position.batch}) in {path / CHECKPOINT_DIR}"
    )


def last_checkpoint(path: Path, kind: str) -> str:
    """Say which ``kind`` (good, complete) checkpoint ``path`` holds last, or that there is none."""
    kept = []
    if (path / CHECKPOINT_DIR).is_dir():
        checkpoints = Checkpoints(path, read_only=True)
        kept = checkpoints.steps()
        checkpoints.close()
    if not kept:
        return "no checkpoint was written before it"
    return f"the last {kind} checkpoint is step {kept[-1]} in {path / CHECKPOINT_DIR}"


def nonfinite_message(error: Exception, path: Path) -> str:
    """Say where training went non-finite, which checkpoint is good, and what to try."""
    first_line = str(error).splitlines()[0]
    if isinstance(error, FloatingPointError):
        return f"{first_line}; {last_checkpoint(path, 'good')}"
    rerun = "rerun with --debug-nans to find the operation"
    return f"{first_line}; {last_checkpoint(path, 'good')}; {rerun}"


def write_failure_message(error: WriteError, path: Path | None, options: JobOptions) -> str:
    """Say which file could not be written and why, what is safe, and how to continue."""
    saved = "no checkpoint was written" if path is None else last_checkpoint(path, "complete")
    status = (
        "status.json says failed" if error.status_written else "status.json could not be updated"
    )
    command = resume_command(options, path) if path is not None else " ".join(options.command)
    return f"{error}; {status}; {saved}; once it can be written, continue with: {command}"
