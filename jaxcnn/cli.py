"""What every jaxcnn command shares: one-line errors, exit codes and the data flags."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from jaxcnn.checkpoint import CheckpointError
from jaxcnn.config import UsageError
from jaxcnn.data import (
    DATA_DIR_ENV,
    MANUAL_DIR_ENV,
    DataError,
    Split,
    load_dataset,
    resolve_data_dir,
    resolve_manual_dir,
)

#: Exit code for a usage or input error.
EXIT_USAGE = 2
#: Exit code for Ctrl-C outside the training loop (128 + SIGINT).
EXIT_INTERRUPTED = 130


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` that reports a bad flag in one line and exits with code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Print ``message`` as one line and exit with :data:`EXIT_USAGE`."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    """Parse a positive integer."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--data-dir`` and ``--manual-dir``, shared by every command that reads data."""
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help=f"tensorflow-datasets data dir, where the prepared dataset lives "
        f"(default: ${DATA_DIR_ENV}, else tfds's default ~/tensorflow_datasets)",
    )
    parser.add_argument(
        "--manual-dir",
        metavar="DIR",
        help=f"folder holding the four original .gz files, for preparing the dataset "
        f"offline (default: ${MANUAL_DIR_ENV}); needed only the first time, when the "
        f"dataset is not prepared yet and cannot be downloaded",
    )


def load_data(
    args: argparse.Namespace, dataset: str, splits: tuple[str, ...] = ("train", "test")
) -> dict[str, Split]:
    """Load ``dataset``'s ``splits`` from where the data flags (or their variables) point."""
    return load_dataset(
        dataset,
        resolve_data_dir(args.data_dir),
        resolve_manual_dir(args.manual_dir),
        splits=splits,
    )


def add_restore_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--workdir`` (required) and ``--step``, for commands that restore a checkpoint."""
    parser.add_argument(
        "--workdir", required=True, metavar="DIR", help="work dir of a jaxcnn.train run"
    )
    parser.add_argument(
        "--step",
        type=int,
        metavar="N",
        help="the checkpoint to restore (default: the newest)",
    )


def exit_process(code: int) -> NoReturn:
    """Exit the process with ``code``, keeping library teardown noise off stderr after an error.

    When a checkpoint read fails, Orbax leaves reads in flight; at interpreter shutdown
    their callbacks, some on tensorstore's own threads, find the event loop closed and
    print tracebacks ("Exception ignored in ...", "Event loop is closed") under the
    one-line error. The error has been reported by then, so stderr is closed first.
    """
    if code != 0:
        sys.stderr.flush()
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
    sys.exit(code)


def run_command(prog: str, main: Callable[[Sequence[str] | None], int]) -> Callable[..., int]:
    """Wrap ``main`` so input errors print one line and return :data:`EXIT_USAGE`.

    Input errors are bad flags (:class:`UsageError`), data that cannot be found or read
    (:class:`DataError`) and checkpoints that cannot be restored (:class:`CheckpointError`).
    """

    def wrapped(argv: Sequence[str] | None = None) -> int:
        try:
            return main(argv)
        except (UsageError, DataError, CheckpointError) as error:
            print(f"{prog}: error: {error}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED

    return wrapped
