"""A run's work dir: its files, and restoring its checkpoints for later commands.

Layout of a work dir::

    config.json      the run's TrainConfig
    metrics.jsonl    one JSON object per log line
    summary.json     written when training finishes
    status.json      what the last training process is doing or how it ended
    checkpoints/     Orbax step folders (see jaxcnn.training.checkpoints)
    tb/              TensorBoard event files (see jaxcnn.tb)
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from jaxcnn.config import TrainConfig
from jaxcnn.errors import (
    EXIT_NONFINITE,
    EXIT_WRITE,
    CheckpointError,
    NonFiniteError,
    UsageError,
    WriteError,
    writing,
)
from jaxcnn.training.checkpoints import CHECKPOINT_DIR, Checkpoints
from jaxcnn.training.state import TrainState, state_shapes
from jaxcnn.training.timetable import Position

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
STATUS = "status.json"
LOCK = ".lock"
#: The values of ``status.json``'s ``status``.
RUNNING, FINISHED, INTERRUPTED, FAILED = "running", "finished", "interrupted", "failed"


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold ``path``'s lock file inside the block, so one process at a time trains there.

    The lock is an advisory ``flock``; the system drops it when its process dies, even
    by SIGKILL, so it never goes stale.

    Raises:
        UsageError: another process holds the lock.
    """
    with writing(path / LOCK):
        lock = (path / LOCK).open("a+")
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            raise UsageError(
                f"--workdir {str(path)!r} is in use by another jaxcnn.train process; wait for "
                "it to finish or stop it first"
            ) from error
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def in_use(path: Path) -> bool:
    """Return whether a process holds ``path``'s lock (is training there) right now."""
    lock_path = path / LOCK
    if not lock_path.is_file():
        return False
    with lock_path.open("r") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
        return False


def write_status(path: Path, status: str, step: int | None, **details: Any) -> None:
    """Write ``status.json``: how the run stands after ``step`` steps (None: not known).

    ``status`` is one of running, finished, interrupted, failed; ``details`` go in as given.
    """
    write_json(path / STATUS, {"status": status, "step": step, **details})


def read_json(path: Path) -> dict[str, Any] | None:
    """Return the JSON object in ``path``, or None if it is missing or unreadable."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json(path: Path, value: dict[str, Any]) -> None:
    """Write ``value`` as indented JSON to ``path``, via a temporary file and a rename.

    ``path`` holds the old or the new value, whole, whatever happens.

    Raises:
        WriteError: the file could not be written (the temporary file is removed).
    """
    replace_whole(path, json.dumps(value, indent=2) + "\n")


def replace_whole(path: Path, text: str) -> None:
    """Replace ``path``'s content by ``text`` through a temporary file and a rename.

    Raises:
        WriteError: the file could not be written (the temporary file is removed).
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        with writing(path):
            tmp.write_text(text)
            tmp.replace(path)
    except WriteError:
        with contextlib.suppress(OSError):  # on a read-only disk there is none to remove
            tmp.unlink(missing_ok=True)
        raise


def read_config(workdir: Path) -> TrainConfig | None:
    """Return the config saved in ``workdir``, or None if there is none.

    Raises:
        UsageError: ``config.json`` exists but is not a jaxcnn config.
    """
    path = workdir / CONFIG
    if not path.exists():
        return None
    try:
        values = json.loads(path.read_text())
        if not isinstance(values, dict):
            raise TypeError(f"a JSON {type(values).__name__}, not an object")
        config = TrainConfig.from_dict(values)
        config.validate()
    except (OSError, ValueError, TypeError, UsageError) as error:
        raise UsageError(f"{path} is not a jaxcnn config: {error}") from error
    return config


def append_metrics(workdir: Path, record: dict[str, Any]) -> None:
    """Append one log record to ``metrics.jsonl``, whole or not at all.

    Raises:
        WriteError: the line could not be written; the file is cut back to its old end.
    """
    path = workdir / METRICS
    size = path.stat().st_size if path.exists() else 0
    try:
        with writing(path), path.open("a") as metrics_file:
            metrics_file.write(json.dumps(record) + "\n")
    except WriteError:
        with contextlib.suppress(OSError):  # a read-only file was not changed anyway
            os.truncate(path, size)
        raise


def read_metrics(workdir: Path, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Return the records of ``metrics.jsonl`` in ``workdir``, in order (none if it has none).

    Raises:
        UsageError: a line is not a log record holding each key in ``required``; the
            message names the file and the line.
    """
    path = workdir / METRICS
    raw = path.read_bytes() if path.is_file() else b""
    return [record for _, record in _metrics_lines(path, raw, required)]


def _metrics_lines(path: Path, raw: bytes, required: Sequence[str] = ()) -> list[tuple[str, dict]]:
    """Return each record of ``raw``, the bytes of ``path``, with its line's text.

    A record is a JSON object with an integer ``step``. A last line that is not one and
    has no newline at its end was cut short (:func:`append_metrics` never leaves one, but
    a power cut can) and is left out; blank lines are skipped.
    """
    lines = raw.split(b"\n")
    unfinished = lines.pop()  # what follows the last newline: empty unless a write was cut
    records = [
        _metrics_record(path, number, line, required)
        for number, line in enumerate(lines, start=1)
        if line.strip()
    ]
    with contextlib.suppress(UsageError):
        if unfinished.strip():
            records.append(_metrics_record(path, len(lines) + 1, unfinished, required))
    return records


def _metrics_record(
    path: Path, number: int, line: bytes, required: Sequence[str]
) -> tuple[str, dict]:
    """Return line ``number`` of ``path`` as text and as a record, or raise :class:`UsageError`."""
    try:
        text = line.decode()
        record = json.loads(text)
    except ValueError as error:  # UnicodeDecodeError and JSONDecodeError both are
        raise UsageError(f"{path}, line {number}: not a line of jaxcnn's log ({error})") from error
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        raise UsageError(f"{path}, line {number}: not a log record with an integer step")
    missing = [key for key in required if key not in record]
    if missing:
        raise UsageError(f"{path}, line {number}: the record has no {', '.join(missing)}")
    return text, record


def truncate_metrics(workdir: Path, last_step: int) -> int:
    """Drop the records of ``metrics.jsonl`` after ``last_step``; return how many were dropped.

    A run that resumes from the checkpoint at ``last_step`` logs those steps again, so
    keeping them would duplicate steps. A last line cut short is dropped too.

    Raises:
        UsageError: a line of ``metrics.jsonl`` is not a log record (nothing is changed).
    """
    path = workdir / METRICS
    if not path.is_file():
        return 0
    raw = path.read_bytes()
    lines = _metrics_lines(path, raw)
    kept = [text for text, record in lines if record["step"] <= last_step]
    kept_text = "".join(text + "\n" for text in kept)
    if kept_text.encode() != raw:
        replace_whole(path, kept_text)
    return len(lines) - len(kept)


def restore_run(
    workdir: str | Path, step: int | None = None
) -> tuple[TrainConfig, TrainState, Position, int]:
    """Restore a finished or interrupted run for evaluation or prediction.

    Args:
        workdir: the run's work dir.
        step: the checkpoint to restore; None for the newest.

    Returns:
        The run's config, its state and data position at that checkpoint, and its step.

    Raises:
        UsageError: the work dir is missing or holds no run or no checkpoint.
        CheckpointError: the checkpoint does not exist, or cannot be restored.
    """
    path = Path(workdir)
    if not path.is_dir():
        raise UsageError(f"--workdir {str(workdir)!r} is not an existing folder")
    config = read_config(path)
    if config is None:
        raise UsageError(f"--workdir {str(workdir)!r} holds no jaxcnn run (no {CONFIG})")
    if not (path / CHECKPOINT_DIR).is_dir():
        raise UsageError(f"--workdir {str(workdir)!r} holds no checkpoints yet")
    checkpoints = Checkpoints(path, read_only=True)
    try:
        chosen = checkpoints.latest_step() if step is None else step
        if chosen is None:
            raise CheckpointError(f"--workdir {str(workdir)!r} holds no complete checkpoint")
        state, position = checkpoints.restore(chosen, like=state_shapes(config))
    finally:
        checkpoints.close()
    return config, state, position, chosen


def saved_config(path: Path | None, config: TrainConfig, override: bool) -> TrainConfig | None:
    """Return the config of the run already in ``path`` (None if there is none).

    Raises:
        UsageError: ``path`` is a file or a link to nothing, holds a folder where a
            run keeps a file, holds run files but no config, or holds a run whose
            hyperparameters differ from ``config`` (unless ``override``).
    """
    if path is None:
        return None
    if path.is_symlink() and not path.exists():
        raise UsageError(
            f"--workdir {str(path)!r} is a symbolic link to {os.readlink(path)!r}, which does "
            "not exist; create that folder or give another --workdir"
        )
    if not path.exists():
        return None
    if not path.is_dir():
        raise UsageError(f"--workdir {str(path)!r} exists and is not a folder")
    for name in (METRICS, SUMMARY, STATUS, LOCK):
        if (path / name).exists() and not (path / name).is_file():
            raise UsageError(
                f"{path / name} is not a file; a run keeps its {name} there: move it away"
            )
    saved = read_config(path)
    if saved is None:
        run_files = [name for name in (METRICS, SUMMARY, CHECKPOINT_DIR) if (path / name).exists()]
        if run_files:
            raise UsageError(
                f"--workdir {str(path)!r} holds {', '.join(run_files)} but no {CONFIG}; "
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


def create(path: Path | None, config: TrainConfig) -> Path:
    """Create and return the work dir: ``path``, else a new ``runs/<time>-<dataset>-<model>``."""
    if path is not None:
        with writing(path):
            path.mkdir(parents=True, exist_ok=True)
        return path
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{stamp}-{config.dataset}-{config.model}"
    path, suffix = base, 1
    while path.exists():
        path, suffix = base.with_name(f"{base.name}-{suffix}"), suffix + 1
    with writing(path):
        path.mkdir(parents=True)
    return path


def save_config(path: Path, config: TrainConfig, saved: TrainConfig | None, step: int) -> None:
    """Write ``config.json``; a different saved config is kept as ``config-before-step-N.json``.

    A second change at the same step keeps its own (``config-before-step-N-2.json``, …):
    no config a run was trained with is ever overwritten.
    """
    if saved is not None and saved != config:
        kept, copy = path / f"config-before-step-{step}.json", 1
        while kept.exists():
            copy += 1
            kept = path / f"config-before-step-{step}-{copy}.json"
        write_json(kept, saved.to_dict())
    write_json(path / CONFIG, config.to_dict())


@contextlib.contextmanager
def recording_status(path: Path, resumed_step: int) -> Iterator[None]:
    """Mark the run in ``path`` running; if the block raises, mark it failed or interrupted.

    ``status.json`` is what ``jaxcnn.runs`` reads; a normal end is recorded by
    :func:`record_end`.
    """
    write_status(path, RUNNING, resumed_step)
    try:
        yield
    except (NonFiniteError, FloatingPointError) as error:  # the latter: --debug-nans
        write_status(
            path,
            FAILED,
            getattr(error, "step", None),
            exit_code=EXIT_NONFINITE,
            reason="non-finite loss or gradient",
            message=str(error).splitlines()[0],
        )
        raise
    except KeyboardInterrupt:  # a second signal while stopping
        write_status(path, INTERRUPTED, None, reason="second signal")
        raise
    except WriteError as error:
        with contextlib.suppress(WriteError):  # the disk may refuse this file too
            write_status(path, FAILED, None, exit_code=EXIT_WRITE, reason=str(error))
            error.status_written = True
        raise
    except Exception as error:
        write_status(path, FAILED, None, reason=type(error).__name__, message=str(error))
        raise


def record_end(path: Path, steps: int, stopped_by: str | None, exit_code: int) -> None:
    """Mark the run in ``path`` finished, or interrupted by the signal ``stopped_by``."""
    if stopped_by is None:
        write_status(path, FINISHED, steps, exit_code=0)
    else:
        write_status(path, INTERRUPTED, steps, exit_code=exit_code, reason=stopped_by)
