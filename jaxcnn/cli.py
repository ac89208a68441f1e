"""What every jaxcnn command shares: one-line errors, exit codes and the data flags."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import gc
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from jaxcnn import compilation_cache, xla_flags
from jaxcnn.data import (
    DATA_DIR_ENV,
    MANUAL_DIR_ENV,
    Split,
    load_dataset,
    resolve_data_dir,
    resolve_manual_dir,
)
from jaxcnn.errors import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    EXIT_WRITE,
    WRITE_ERRNOS,
    CheckpointError,
    DataError,
    UsageError,
    WriteError,
)
from jaxcnn.training.signals import ctrl_c_never_lost

#: How a config field's type is parsed from its flag's text, when its flag says nothing else.
PARSERS: dict[str, Callable[[str], Any]] = {"int": int, "int | None": int, "float": float}


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` that reports a bad flag in one line and exits with code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Print ``message`` as one line and exit with :data:`EXIT_USAGE`."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def add_config_flags(parser: argparse.ArgumentParser, config_type: type) -> None:
    """Add a flag for every field of the dataclass ``config_type``, from its metadata.

    ``--batch-size`` for ``batch_size``; its help is the field's ``help`` followed by the
    default (see :func:`jaxcnn.config.flag`). A bool field is a switch. A field whose
    default comes from a recipe defaults to None here, so the recipe can fill it in.
    """
    for field in dataclasses.fields(config_type):
        meta = field.metadata
        shown = meta["shown_default"] or field.default
        if meta["from_recipe"]:
            shown = f"the recipe's, {shown}"
        name = "--" + field.name.replace("_", "-")
        if field.type == "bool":
            help_text = f"{meta['help']} (default: {'on' if field.default else 'off'})"
            parser.add_argument(name, action="store_true", help=help_text.replace("%", "%%"))
            continue
        help_text = f"{meta['help']} (default: {shown})".replace("%", "%%")
        parser.add_argument(
            name,
            type=meta["parse"] or PARSERS.get(field.type, str),
            choices=meta["choices"],
            metavar=meta["metavar"],
            default=None if meta["from_recipe"] else field.default,
            help=help_text,
        )


def flag_table(parser: argparse.ArgumentParser) -> str:
    """Return ``parser``'s flags as the README's Markdown table: flag, default, meaning.

    The default is the text of the help's last ``(default: ...)``.
    """
    rows = ["| flag | default | meaning |", "| --- | --- | --- |"]
    for action in parser._actions:  # argparse keeps no public list of its flags
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        flag = action.option_strings[-1]
        if action.nargs != 0:
            choices = "{" + ",".join(action.choices) + "}" if action.choices else None
            flag += f" {action.metavar or choices or action.dest.upper()}"
        help_text = (action.help or "") % {**vars(action), "prog": parser.prog}
        meaning, _, default = help_text.rpartition(" (default: ")
        if not meaning:  # a switch without a default in its help
            meaning, default = default, "off)"
        rows.append(f"| `{flag}` | {default[:-1]} | {meaning} |")
    return "\n".join(rows)


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
        help="folder holding the four original .gz files, for preparing the dataset "
        "offline; needed only the first time, when the dataset is not prepared yet and "
        f"cannot be downloaded (default: ${MANUAL_DIR_ENV})",
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


def add_restore_flags(
    parser: argparse.ArgumentParser,
    workdir_help: str = "work dir of a jaxcnn.train run",
    step_help: str = "the checkpoint to restore (default: the newest)",
) -> None:
    """Add ``--workdir`` (required) and ``--step``, for commands that restore a checkpoint."""
    parser.add_argument("--workdir", required=True, metavar="DIR", help=workdir_help)
    parser.add_argument("--step", type=int, metavar="N", help=step_help)


def checkpoint_command_parser(prog: str, description: str) -> ArgumentParser:
    """Return the parser of a command that reads a run's checkpoint: restore and data flags."""
    parser = ArgumentParser(prog=prog, description=description)
    add_restore_flags(parser)
    add_data_flags(parser)
    return parser


def check_new_file(flag: str, path: Path, suffix: str | None = None) -> None:
    """Refuse an output file that is not a new file in an existing folder.

    Each command that writes a file the user names calls this before any other work, so
    that nothing is overwritten and nothing is computed only to be lost at the end.

    Raises:
        UsageError: ``path`` does not end in ``suffix`` (when given), exists, or its
            folder does not exist.
    """
    if suffix is not None and path.suffix.lower() != suffix:
        raise UsageError(f"{flag} {str(path)!r} must end in {suffix}")
    if path.exists() or path.is_symlink():
        raise UsageError(
            f"{flag} {str(path)!r} exists; give a new file name (nothing is overwritten)"
        )
    if not path.parent.is_dir():
        raise UsageError(f"{flag} {str(path)!r}: folder {str(path.parent)!r} does not exist")


def prepare_jax(compilation_cache_off: bool = False) -> None:
    """Set what JAX reads when it starts, before a command computes anything.

    The XLA:CPU switches (:mod:`jaxcnn.xla_flags`) and JAX's persistent compilation
    cache (:mod:`jaxcnn.compilation_cache`), off for this process with
    ``compilation_cache_off``.

    Raises:
        UsageError: ``$JAXCNN_COMPILATION_CACHE`` names a folder that cannot be created.
    """
    xla_flags.configure()
    compilation_cache.configure(turned_off=compilation_cache_off)


def resume_collection() -> None:
    """Turn Python's garbage collector back on after a command's imports, which ran without it.

    ``python -m jaxcnn.train`` calls ``gc.disable()`` before its imports, and this after
    them. JAX, Flax and optax create about 200,000 objects as they import, which live as
    long as the process, and the cyclic collector walked all of them at each full
    collection, twice during the imports: ``import jaxcnn.train`` took 1.85 s without
    it against 2.20 s with it (whole processes, medians of 5 alternating, this project's
    AVX2 EPYC). ``gc.freeze()`` moves those objects to the permanent generation, which
    later collections skip; the collector then runs as usual.
    """
    gc.freeze()
    gc.enable()


def exit_process(code: int) -> NoReturn:
    """End the process with ``code`` once its work is written, skipping interpreter teardown.

    Every file a command writes is closed before it returns, and the exit handlers
    (``atexit``: JAX's distributed shutdown among them) still run here. What is skipped
    is the interpreter's finalisation, which spends half a second tearing down XLA's
    and tensorstore's thread pools and clients (0.5 s of a 19 s training run measured
    on this project's machines), and which after a failed checkpoint read prints the
    tracebacks of Orbax reads left in flight ("Event loop is closed") under the
    one-line error; after an error, stderr is closed first for that reason too.
    """
    _flush_standard_streams()
    if code != 0:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
    atexit._run_exitfuncs()  # no public API runs them; os._exit alone would skip them
    _flush_standard_streams()
    os._exit(code)


def _flush_standard_streams() -> None:
    """Flush stdout and stderr; a reader that went away (a closed pipe) loses nothing of ours."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


def run_command(prog: str, main: Callable[[Sequence[str] | None], int]) -> Callable[..., int]:
    """Wrap ``main`` so input errors print one line and return :data:`EXIT_USAGE`.

    Input errors are bad flags (:class:`UsageError`), data that cannot be found or read
    (:class:`DataError`) and checkpoints that cannot be restored (:class:`CheckpointError`).
    An output that cannot be written (a full disk, a read-only folder, a permission)
    prints one line and returns :data:`EXIT_WRITE`.
    """

    def wrapped(argv: Sequence[str] | None = None) -> int:
        try:
            with ctrl_c_never_lost():
                return main(argv)
        except (UsageError, DataError, CheckpointError) as error:
            print(f"{prog}: error: {error}", file=sys.stderr)
            return EXIT_USAGE
        except WriteError as error:
            print(f"{prog}: error: {error}", file=sys.stderr)
            return EXIT_WRITE
        except OSError as error:
            if error.errno not in WRITE_ERRNOS:
                raise
            print(
                f"{prog}: error: could not write {error.filename}: {error.strerror}",
                file=sys.stderr,
            )
            return EXIT_WRITE
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED

    return wrapped
