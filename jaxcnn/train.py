"""``python -m jaxcnn.train``: the seed tutorial's training job.

Trains the seed's CNN on MNIST with its settings (3 epochs, batch 64, Adam 1e-3),
printing the seed's log line every 100 batches, and writes ``metrics.jsonl``,
checkpoints and, at the end, ``summary.json`` to the work dir. Run again with the same
work dir, it continues from the newest checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import shlex
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax

from jaxcnn import data, loop, models, parallel, progress, steps, tb, workdir
from jaxcnn.checkpoint import CHECKPOINT_DIR, Checkpoints, Position, tree_sha256
from jaxcnn.cli import (
    ArgumentParser,
    add_data_flags,
    exit_process,
    load_data,
    positive_int,
    run_command,
)
from jaxcnn.config import LOOPS, RECIPES, SCHEDULES, TrainConfig, UsageError

PROG = "python -m jaxcnn.train"
DEFAULTS = TrainConfig()
#: Exit code when the loss or a gradient stops being finite.
EXIT_NONFINITE = 3


def parse_chunks(text: str) -> int | None:
    """Return ``--chunks``'s value: None for ``auto``, else the positive integer given."""
    if text == "auto":
        return None
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'auto' or a positive integer") from None


def build_parser() -> ArgumentParser:
    """Return the command-line parser; every flag's help says what it does."""
    parser = ArgumentParser(
        prog=PROG,
        description="Train the seed tutorial's CNN with an explicit jax.value_and_grad step "
        "and optax.adam. Prints the backend and devices, then one line every --log-every "
        "batches: epoch, [images seen/total (percent)], batch loss, running train accuracy "
        "of the epoch, accuracy on the whole test set.",
    )
    parser.add_argument(
        "--recipe",
        choices=tuple(RECIPES),
        default="seed",
        help="a named set of defaults for --epochs, --batch-size, --learning-rate and "
        "--schedule: 'seed' is the tutorial's (3 epochs, batch 64, Adam 1e-3, constant); "
        "'fast' is 3 epochs, batch 128, Adam peaking at 4e-3 on a one-cycle schedule "
        "(default: %(default)s); flags given explicitly win",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        help="passes over the training set (default: the recipe's, 3)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        help="training examples per step, across all devices (default: the recipe's, 64)",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        help="Adam's learning rate; with a one-cycle schedule its peak (default: the "
        "recipe's, 0.001)",
    )
    parser.add_argument(
        "--schedule",
        choices=SCHEDULES,
        help="the learning rate over the run: constant, or one-cycle (warm up over the "
        "first quarter, then cosine down to nearly 0) (default: the recipe's, constant)",
    )
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default=DEFAULTS.loop,
        help="how the steps between two log points run: 'python' dispatches one compiled "
        "step at a time, 'scan' runs them as one compiled lax.scan over the training set "
        "kept on the devices; 'auto' takes python on CPUs and scan on GPUs/TPUs "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--chunks",
        type=parse_chunks,
        default=None,
        metavar="{auto,N}",
        help="compute each batch in N independent parts, their gradients summed: the "
        "same step up to float rounding, which XLA:CPU runs on several cores at once; "
        "'auto' takes 4 on one CPU device for a model without BatchNorm, else 1 "
        "(default: auto)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULTS.seed,
        help="seeds the initial weights and every epoch's shuffle; the same "
        "seed gives the same run (default: %(default)s)",
    )
    parser.add_argument(
        "--log-every",
        type=int,
        default=DEFAULTS.log_every,
        help="batches between log lines; each one also evaluates the whole "
        "test set (default: %(default)s)",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="stop after this many training steps in all (default: no limit)",
    )
    parser.add_argument(
        "--dataset",
        default=DEFAULTS.dataset,
        help=f"tfds dataset: {', '.join(data.DATASETS)} (default: %(default)s)",
    )
    parser.add_argument(
        "--model",
        default=DEFAULTS.model,
        help=f"network: {', '.join(models.MODELS)} (default: %(default)s)",
    )
    parser.add_argument(
        "--eval-batch-size",
        type=int,
        default=DEFAULTS.eval_batch_size,
        help="test examples per evaluation batch (default: %(default)s)",
    )
    add_data_flags(parser)
    parser.add_argument(
        "--workdir",
        metavar="DIR",
        help="folder for config.json, metrics.jsonl, checkpoints/ and summary.json (default: "
        "a new folder under ./runs/); if it holds a run, training continues from its newest "
        "checkpoint",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="STEPS",
        help="steps between checkpoints (default: one at the end of every epoch); one is "
        "also written when training ends or is interrupted",
    )
    parser.add_argument(
        "--keep",
        type=int,
        default=DEFAULTS.keep,
        help="newest checkpoints to keep; the best by test accuracy is kept besides "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--override",
        action="store_true",
        help="resume even if the model, dataset, batch size, learning rate or seed differ "
        "from the saved run's (the old config is kept beside the new one)",
    )
    parser.add_argument(
        "--log-grads",
        action="store_true",
        help="add each layer's gradient norm and update-to-parameter ratio to every log "
        "line and to metrics.jsonl (computed at log points only)",
    )
    add_parallel_flags(parser)
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar; without this flag a bar per epoch (steps, steps/s, time "
        "left, last loss) is shown under the log lines when the output is a terminal",
    )
    parser.add_argument(
        "--debug-nans",
        action="store_true",
        help="turn on jax_debug_nans, so a NaN stops at the operation that made it (slow)",
    )
    return parser


def add_parallel_flags(parser: argparse.ArgumentParser) -> None:
    """Add the flags that spread training over devices and processes."""
    group = parser.add_argument_group(
        "devices and processes",
        "Data parallelism: every global batch (--batch-size) is split evenly among the "
        "devices, the parameters are replicated, and XLA all-reduces the gradients.",
    )
    group.add_argument(
        "--devices",
        type=int,
        metavar="N",
        help="devices to use in each process (default: all of this process's devices); "
        "--batch-size must be a multiple of the total",
    )
    group.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        default=os.environ.get("JAX_COORDINATOR_ADDRESS"),
        help="address of process 0 for a multi-process run, the same in every process "
        "(default: $JAX_COORDINATOR_ADDRESS); calls jax.distributed.initialize",
    )
    group.add_argument(
        "--num-processes",
        type=int,
        metavar="P",
        default=os.environ.get("JAX_NUM_PROCESSES", "1"),
        help="processes in the run (default: $JAX_NUM_PROCESSES, else 1)",
    )
    group.add_argument(
        "--process-id",
        type=int,
        metavar="I",
        default=os.environ.get("JAX_PROCESS_ID", "0"),
        help="this process's number, 0 to P-1; only process 0 prints and writes the "
        "work dir's files (default: $JAX_PROCESS_ID, else 0)",
    )


def create_placement(args: argparse.Namespace, config: TrainConfig) -> parallel.Placement:
    """Join the multi-process run if one is asked for; return the devices' placement.

    Raises:
        UsageError: the process flags are inconsistent, a multi-process run has no
            --workdir, or the batch size does not split among the devices.
    """
    if args.num_processes != 1 or args.coordinator:
        if not args.coordinator:
            raise UsageError(f"--num-processes {args.num_processes} needs --coordinator HOST:PORT")
        if not args.workdir:
            raise UsageError(
                "--coordinator: a multi-process run needs --workdir, a folder every process "
                "can reach"
            )
        if args.process_id != 0:
            discard_stdout()  # only process 0 prints; errors still reach stderr
        parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    placement = parallel.create_placement(args.devices)
    placement.check_batch_size("--batch-size", config.batch_size)
    return placement


def discard_stdout() -> None:
    """Send this process's standard output, Python's and native libraries', to the null device."""
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Return the validated :class:`TrainConfig` that the parsed flags describe."""
    recipe = RECIPES[args.recipe]
    chosen = {
        name: recipe[name] if getattr(args, name) is None else getattr(args, name)
        for name in recipe
    }
    return TrainConfig(
        model=args.model,
        dataset=args.dataset,
        **chosen,
        seed=args.seed,
        log_every=args.log_every,
        max_steps=args.max_steps,
        eval_batch_size=args.eval_batch_size,
        checkpoint_every=args.checkpoint_every,
        keep=args.keep,
        log_grads=args.log_grads,
        loop=args.loop,
        chunks=args.chunks,
    ).validate()


def inspect_workdir(path: Path | None, config: TrainConfig, override: bool) -> TrainConfig | None:
    """Return the config of the run already in ``path`` (None if there is none).

    Raises:
        UsageError: ``path`` is a file, holds run files but no config, or holds a run
            whose hyperparameters differ from ``config`` (unless ``override``).
    """
    if path is None or not path.exists():
        return None
    if not path.is_dir():
        raise UsageError(f"--workdir {str(path)!r} exists and is not a folder")
    saved = workdir.read_config(path)
    if saved is None:
        taken = [
            name
            for name in (workdir.METRICS, workdir.SUMMARY, CHECKPOINT_DIR)
            if (path / name).exists()
        ]
        if taken:
            raise UsageError(
                f"--workdir {str(path)!r} holds {', '.join(taken)} but no {workdir.CONFIG}; "
                "choose a new folder so nothing is overwritten"
            )
        return None
    differences = saved.differences(config)
    if differences and not override:
        raise UsageError(
            f"--workdir {str(path)!r} holds a run with other hyperparameters ("
            + "; ".join(differences)
            + "); use the saved ones, a new --workdir, or --override"
        )
    return saved


@dataclasses.dataclass(frozen=True)
class StartPoint:
    """A checkpoint to continue from: its state, its position in the data, its step."""

    state: steps.TrainState
    position: Position
    step: int


def restore_latest(
    path: Path | None, config: TrainConfig, placement: parallel.Placement
) -> StartPoint | None:
    """Return the newest checkpoint in ``path`` to continue from, placed on the devices."""
    if path is None or not (path / CHECKPOINT_DIR).is_dir():
        return None
    checkpoints = Checkpoints(path, read_only=True)
    try:
        step = checkpoints.latest_step()
        if step is None:
            return None
        like = placement.put_state(workdir.new_state(config))
        state, position = checkpoints.restore(step, like=like)
    finally:
        checkpoints.close()
    if position.seed != config.seed:
        raise UsageError(
            f"checkpoint step {step} in {path} was written with --seed {position.seed}; "
            "its data order cannot continue under another seed"
        )
    return StartPoint(state=state, position=position, step=step)


def create_workdir(path: Path | None, config: TrainConfig) -> Path:
    """Create and return the work dir: ``path``, else a new ``runs/<time>-<dataset>-<model>``."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        return path
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{stamp}-{config.dataset}-{config.model}"
    path, suffix = base, 1
    while path.exists():
        path, suffix = base.with_name(f"{base.name}-{suffix}"), suffix + 1
    path.mkdir(parents=True)
    return path


def save_config(path: Path, config: TrainConfig, saved: TrainConfig | None, step: int) -> None:
    """Write ``config.json``; a different saved config is kept as ``config-before-step-N.json``."""
    if saved is not None and saved != config:
        workdir.write_json(path / f"config-before-step-{step}.json", saved.to_dict())
    workdir.write_json(path / workdir.CONFIG, config.to_dict())


def format_log_line(record: loop.LogRecord, num_train: int, steps_in_epoch: int) -> str:
    """Return the seed's log line for ``record`` (its fields, in English)."""
    percent = 100.0 * record.batch / steps_in_epoch
    return (
        f"epoch {record.epoch} [{record.images_seen}/{num_train} ({percent:.0f}%)]\t"
        f"loss: {record.loss:.6f}\t"
        f"train accuracy: {100 * record.train_accuracy:.2f}%\t"
        f"test accuracy: {100 * record.test_accuracy:.2f}%"
    )


def format_grad_line(record: loop.LogRecord) -> str:
    """Return the ``--log-grads`` line: each layer's gradient norm and update ratio."""
    norms = "  ".join(f"{layer} {value:.4f}" for layer, value in record.grad_norm.items())
    ratios = "  ".join(f"{layer} {value:.1e}" for layer, value in record.update_ratio.items())
    return f"\tgradient norm: {norms}\t|update|/|param|: {ratios}"


class StopRequest:
    """Set by SIGINT or SIGTERM; the training loop polls it after every step.

    A second signal while a stop is pending raises ``KeyboardInterrupt`` at once.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> bool:
        """Return whether a stop was requested."""
        return self.signum is not None

    def handle(self, signum: int, frame: Any) -> None:
        """Signal handler: remember the first signal; a second one aborts."""
        del frame
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals(request: StopRequest) -> Iterator[None]:
    """Route SIGINT and SIGTERM to ``request`` inside the block."""
    previous = {sig: signal.signal(sig, request.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def resume_command(argv: Sequence[str], path: Path, workdir_given: bool) -> str:
    """Return the command line that continues this run."""
    words = [*argv] if workdir_given else [*argv, "--workdir", str(path)]
    return " ".join([PROG, *map(shlex.quote, words)])


def run_training(
    config: TrainConfig,
    splits: dict[str, data.Split],
    path: Path,
    start: StartPoint | None,
    stop: StopRequest,
    placement: parallel.Placement,
    show_progress: bool = False,
) -> loop.TrainResult:
    """Train from ``start`` (or from scratch), logging and checkpointing into ``path``.

    With ``show_progress`` and a terminal on stdout, a bar per epoch goes under the log
    lines. The log records also go to ``metrics.jsonl`` and to TensorBoard (``tb/``).
    In a multi-process run every process calls this; only process 0 writes the work
    dir's files, and all of them write their part of each checkpoint.
    """
    if start is None:
        start = StartPoint(
            placement.put_state(workdir.new_state(config)),
            Position(epoch=0, batch=0, seed=config.seed),
            0,
        )
    state, position = start.state, start.position
    loop_kind = loop.resolve_loop(config.loop)
    chunks = loop.resolve_chunks(config.chunks, state, placement, config.batch_size)
    compiled = loop.compile_steps(
        state,
        *loop.example_batches(config, splits, placement),
        placement,
        config.log_grads,
        stretch_shapes=(
            loop.stretch_shapes(config, len(splits["train"]), position)
            if loop_kind == "scan"
            else ()
        ),
        train_split=splits["train"],
        chunks=chunks,
    )
    print(
        f"compiled train and eval steps in {compiled.seconds:.2f} s "
        f"({loop_kind} loop, {chunks} chunk{'s' if chunks > 1 else ''} per batch)",
        flush=True,
    )
    num_train = len(splits["train"])
    steps_in_epoch = data.steps_per_epoch(num_train, config.batch_size)
    checkpoints = Checkpoints(path, keep=config.keep)
    board = tb.Board(path / tb.TB_DIR, config)  # opens files lazily: in process 0 only
    primary = jax.process_index() == 0
    display = progress.for_stream(
        show_progress,
        sys.stdout,
        steps_in_epoch,
        loop.total_steps(config, num_train),
        position.epoch * steps_in_epoch + position.batch,
    )

    def on_log(record: loop.LogRecord) -> None:
        display.write(format_log_line(record, num_train, steps_in_epoch))
        if record.grad_norm is not None:
            display.write(format_grad_line(record))
        display.show_loss(record.loss)
        fields = {  # without the timing, which a resumed run would not reproduce
            key: value
            for key, value in dataclasses.asdict(record).items()
            if value is not None and key != "step_seconds"
        }
        if primary:
            workdir.append_metrics(path, fields)
            board.write(record)

    def on_checkpoint(state: Any, after: Position, test: loop.EvalResult) -> None:
        checkpoints.save(state, after, test.accuracy)
        board.cut()  # a resumed run drops the event files after its checkpoint (jaxcnn.tb)

    hooks = loop.Hooks(
        on_log=on_log,
        on_checkpoint=on_checkpoint,
        stop_requested=stop,
        on_progress=display.advance,
    )
    try:
        result = loop.train(config, splits, state, position, compiled, hooks, placement)
    finally:
        display.close()
        board.close()
        checkpoints.close()
    if not result.stopped and primary:
        write_summary(path, config, result, compiled.seconds, placement, loop_kind, chunks)
    return result


def write_summary(
    path: Path,
    config: TrainConfig,
    result: loop.TrainResult,
    compile_seconds: float,
    placement: parallel.Placement,
    loop_kind: str,
    chunks: int,
) -> None:
    """Write ``summary.json`` and print the closing line."""
    summary = {
        "test_accuracy": result.test.accuracy,
        "test_loss": result.test.loss,
        "steps": result.steps,
        "epochs": result.epochs,
        "train_seconds": result.train_seconds,
        "compile_seconds": compile_seconds,
        "backend": jax.default_backend(),
        "devices": [str(device) for device in placement.mesh.devices.flat],
        "processes": placement.num_processes,
        "loop": loop_kind,
        "chunks": chunks,
        "params_sha256": tree_sha256(result.state.params),
        "config": config.to_dict(),
    }
    workdir.write_json(path / workdir.SUMMARY, summary)
    print(
        f"done: {result.steps} steps, test accuracy {100 * result.test.accuracy:.2f}%, "
        f"test loss {result.test.loss:.4f}, {result.train_seconds:.1f} s training; "
        f"wrote {path}",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the training job; return the process exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    if args.debug_nans:
        jax.config.update("jax_debug_nans", True)
    requested = Path(args.workdir) if args.workdir else None
    placement = create_placement(args, config)
    primary = jax.process_index() == 0
    with contextlib.ExitStack() as context:
        saved = inspect_workdir(requested, config, args.override)
        if saved is not None and primary:  # a run is there: lock it before reading it
            context.enter_context(workdir.exclusive(requested))
        print(f"backend: {jax.default_backend()}, {describe_devices(placement)}", flush=True)
        start = restore_latest(requested, config, placement)
        if start or saved:
            print(describe_start(start, requested), flush=True)
        splits = load_data(args, config.dataset)
        resumed_step = start.step if start else 0
        if primary:
            path = create_workdir(requested, config)
            if saved is None:
                context.enter_context(workdir.exclusive(path))
            save_config(path, config, saved, resumed_step)
            workdir.truncate_metrics(path, resumed_step)
            tb.truncate(path / tb.TB_DIR, resumed_step)
        else:
            path = requested
        parallel.barrier("workdir ready")
        stop = StopRequest()
        try:
            status = recording_status(path, resumed_step) if primary else contextlib.nullcontext()
            with status, stop_on_signals(stop):
                result = run_training(
                    config, splits, path, start, stop, placement, not args.no_progress
                )
                if primary:
                    record_end(path, result, stop)
        except (loop.NonFiniteError, FloatingPointError) as error:  # the latter: --debug-nans
            print(f"{PROG}: error: {nonfinite_message(error, path)}", file=sys.stderr)
            return EXIT_NONFINITE
        if result.stopped:
            signum = stop.signum or signal.SIGTERM  # another process may have got it
            print(
                f"stopped by {signal.Signals(signum).name} after step {result.steps} (epoch "
                f"{result.position.epoch}, batch {result.position.batch}); checkpoint saved in "
                f"{path / CHECKPOINT_DIR}. Resume with: "
                f"{resume_command(argv, path, requested is not None)}",
                flush=True,
            )
            return 128 + signum
    return 0


def describe_devices(placement: parallel.Placement) -> str:
    """Say which devices the run uses, and in how many processes."""
    devices = list(placement.mesh.devices.flat)
    processes = f" in {placement.num_processes} processes" if placement.num_processes > 1 else ""
    return f"devices: {devices}{processes}"


@contextlib.contextmanager
def recording_status(path: Path, resumed_step: int) -> Iterator[None]:
    """Mark the run in ``path`` running; if the block raises, mark it failed or interrupted.

    ``status.json`` is what ``jaxcnn.runs`` reads; a normal end is recorded by
    :func:`record_end`.
    """
    workdir.write_status(path, workdir.RUNNING, resumed_step)
    try:
        yield
    except (loop.NonFiniteError, FloatingPointError) as error:
        workdir.write_status(
            path,
            workdir.FAILED,
            getattr(error, "step", None),
            exit_code=EXIT_NONFINITE,
            reason="non-finite loss or gradient",
            message=str(error).splitlines()[0],
        )
        raise
    except KeyboardInterrupt:  # a second signal while stopping
        workdir.write_status(path, workdir.INTERRUPTED, None, reason="second signal")
        raise
    except Exception as error:
        workdir.write_status(
            path, workdir.FAILED, None, reason=type(error).__name__, message=str(error)
        )
        raise


def record_end(path: Path, result: loop.TrainResult, stop: StopRequest) -> None:
    """Mark the run in ``path`` finished, or interrupted by the signal that stopped it."""
    if not result.stopped:
        workdir.write_status(path, workdir.FINISHED, result.steps, exit_code=0)
        return
    signum = stop.signum or signal.SIGTERM  # another process may have got it
    workdir.write_status(
        path,
        workdir.INTERRUPTED,
        result.steps,
        exit_code=128 + signum,
        reason=signal.Signals(signum).name,
    )


def describe_start(start: StartPoint | None, path: Path) -> str:
    """Say where a run in an existing work dir continues from."""
    if start is None:
        return f"no checkpoint in {path} yet: starting from step 0"
    return (
        f"resuming from the checkpoint at step {start.step} (epoch {start.position.epoch}, "
        f"batch {start.position.batch}) in {path / CHECKPOINT_DIR}"
    )


def nonfinite_message(error: Exception, path: Path) -> str:
    """Say where training went non-finite, which checkpoint is good, and what to try."""
    checkpoints = Checkpoints(path, read_only=True)
    kept = checkpoints.steps()
    checkpoints.close()
    last_good = (
        f"the last good checkpoint is step {kept[-1]}"
        if kept
        else "no checkpoint was written before it"
    )
    first_line = str(error).splitlines()[0]
    if isinstance(error, FloatingPointError):
        return f"{first_line}; {last_good} in {path / CHECKPOINT_DIR}"
    return (
        f"{first_line}; {last_good} in {path / CHECKPOINT_DIR}; rerun with --debug-nans to "
        "find the operation"
    )


cli_main = run_command(PROG, main)

if __name__ == "__main__":
    exit_process(cli_main())
