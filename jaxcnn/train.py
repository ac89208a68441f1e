"""``python -m jaxcnn.train``: the tutorial's training job.

Trains the tutorial's CNN on MNIST with its settings (3 epochs, batch 64, Adam 1e-3),
printing the tutorial's log line every 100 batches, and writes ``metrics.jsonl``,
checkpoints and, at the end, ``summary.json`` to the work dir. Run again with the same
work dir, it continues from the newest checkpoint.

This module only reads the flags: the config's from :class:`jaxcnn.config.TrainConfig`,
where each is declared once, and the job's; then it calls
:func:`jaxcnn.training.job.run_job`, which runs the loop of
:mod:`jaxcnn.training.loop`.
"""

from __future__ import annotations

import gc

if __name__ == "__main__":  # collect no garbage while importing; see resume_collection
    gc.disable()

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from jaxcnn.cli import (
    ArgumentParser,
    add_config_flags,
    add_data_flags,
    exit_process,
    flag_table,
    prepare_jax,
    resume_collection,
    run_command,
)
from jaxcnn.compilation_cache import CACHE_ENV
from jaxcnn.config import RECIPES, TrainConfig, parse_recipe
from jaxcnn.training.job import JobOptions, run_job
from jaxcnn.training.resources import MEMORY_LIMIT_ENV

PROG = "python -m jaxcnn.train"


def build_parser() -> ArgumentParser:
    """Return the command-line parser; every flag's help says what it does."""
    parser = ArgumentParser(
        prog=PROG,
        description="Train the tutorial's CNN with an explicit jax.value_and_grad step "
        "and optax.adam. Prints the backend and devices, then one line every --log-every "
        "batches: epoch, [images seen/total (percent)], batch loss, running train accuracy "
        "of the epoch, accuracy on the whole test set.",
        epilog="Sizing a run: before the first step the job compares XLA's memory analysis "
        "of the compiled steps, plus the data kept on the device, with the memory it can "
        f"use (host RAM on a CPU, device memory on a GPU/TPU, or ${MEMORY_LIMIT_ENV} such as "
        "8G if lower) and stops with exit 2 if the run cannot fit: lower --batch-size, "
        "--eval-batch-size or choose a smaller --model. Exit codes: 0 done, 2 bad input "
        "or a run that cannot fit, 3 non-finite loss or gradient, 4 a file could not be "
        "written (the message says how to continue), 130/143 stopped by SIGINT/SIGTERM.",
    )
    recipes = "; ".join(
        f"'{name}': " + ", ".join(f"{value}" for value in recipe.values())
        for name, recipe in RECIPES.items()
    )
    parser.add_argument(
        "--recipe",
        type=parse_recipe,
        choices=tuple(RECIPES),
        default="tutorial",
        help="a named set of defaults for --epochs, --batch-size, --learning-rate and "
        f"--schedule ({recipes}); 'tutorial' is the PyTorch tutorial's, 'fast' reaches 99%% sooner "
        "(see Speed in the README); flags given explicitly win (default: %(default)s)",
    )
    add_config_flags(parser, TrainConfig)
    add_data_flags(parser)
    parser.add_argument(
        "--workdir",
        metavar="DIR",
        help="folder for config.json, metrics.jsonl, checkpoints/ and summary.json; if it "
        "holds a run, training continues from its newest checkpoint (default: a new "
        "folder runs/<time>-<dataset>-<model>)",
    )
    parser.add_argument(
        "--override",
        action="store_true",
        help="resume even if the model, dataset, batch size, learning rate or seed differ "
        "from the saved run's (the old config is kept beside the new one)",
    )
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
    parser.add_argument(
        "--no-compilation-cache",
        action="store_true",
        help="compile everything afresh and keep nothing: without this flag the compiled "
        f"steps are kept in ${CACHE_ENV} (a folder, or 'off'), else "
        "$XDG_CACHE_HOME/jaxcnn/xla or ~/.cache/jaxcnn/xla, and a second run of the same "
        "job loads them instead of compiling",
    )
    add_parallel_flags(parser)
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
        help="devices to use in each process; --batch-size must be a multiple of the total "
        "(default: all of this process's devices)",
    )
    group.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        default=os.environ.get("JAX_COORDINATOR_ADDRESS"),
        help="address of process 0 for a multi-process run, the same in every process; "
        "calls jax.distributed.initialize (default: $JAX_COORDINATOR_ADDRESS)",
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


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Return the validated :class:`TrainConfig` that the parsed flags describe.

    A flag the recipe sets and the command line does not give takes the recipe's value.
    """
    recipe = RECIPES[args.recipe]
    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig)}
    chosen = {name: recipe[name] if values[name] is None else values[name] for name in recipe}
    return TrainConfig(**{**values, **chosen}).validate()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the training job; return the process exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    prepare_jax(compilation_cache_off=args.no_compilation_cache)
    options = JobOptions(
        workdir=Path(args.workdir) if args.workdir else None,
        override=args.override,
        show_progress=not args.no_progress,
        debug_nans=args.debug_nans,
        data_dir=args.data_dir,
        manual_dir=args.manual_dir,
        devices=args.devices,
        coordinator=args.coordinator,
        num_processes=args.num_processes,
        process_id=args.process_id,
        command=(PROG, *argv),
    )
    return run_job(config_from_args(args), options)


def readme_flag_table() -> str:
    """Return the README's table of this command's flags, made from the parser."""
    return flag_table(build_parser())


cli_main = run_command(PROG, main)

if __name__ == "__main__":
    resume_collection()
    exit_process(cli_main())
