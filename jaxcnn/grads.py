"""``python -m jaxcnn.grads``: the gradient of a checkpoint, leaf by leaf.

The tools it uses, gradients as values to summarise, compare and save, are in
:mod:`jaxcnn.inspection.gradients`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxcnn import cli, data
from jaxcnn.errors import UsageError
from jaxcnn.inspection.gradients import format_table, global_norm, save_npz, summarize
from jaxcnn.training import workdir
from jaxcnn.training.resources import check_batch_size
from jaxcnn.training.step import loss_and_gradients

PROG = "python -m jaxcnn.grads"


def build_parser() -> cli.ArgumentParser:
    """Return the command-line parser."""
    parser = cli.checkpoint_command_parser(
        PROG,
        "Restore a checkpoint, compute the gradient of the loss on a batch of "
        "the training set (the batch the run would train_split on next), and print it leaf by "
        "leaf: shape, L2 norm, RMS, largest magnitude and share of exact zeros.",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        metavar="B",
        help="examples in the batch (default: the run's batch size)",
    )
    parser.add_argument(
        "--save",
        type=Path,
        metavar="FILE.npz",
        help="also save the gradient to this new .npz file, keyed by leaf path",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Print (and optionally save) a checkpoint's gradient; return the exit code."""
    args = build_parser().parse_args(argv)
    cli.prepare_jax()  # the XLA:CPU switches and the compilation cache
    if args.batch_size is not None and args.batch_size <= 0:
        raise UsageError(f"--batch-size {args.batch_size}: must be a positive integer")
    if args.save is not None:
        cli.check_new_file("--save", args.save, ".npz")
    config, state, position, step = workdir.restore_run(args.workdir, args.step)
    batch_size = args.batch_size or config.batch_size
    train_split = cli.load_data(args, config.dataset, ("train",))["train"]
    check_batch_size("--batch-size", batch_size, config.dataset, "train", train_split)
    order = data.epoch_permutation(config.seed, position.epoch, len(train_split))
    start = (position.batch * config.batch_size) % len(train_split)
    indices = np.resize(np.roll(order, -start), batch_size)
    batch = data.make_batch(train_split, indices, np.ones(batch_size, np.float32))
    loss, grads = loss_and_gradients(state, batch)
    loss = float(loss)
    print(
        f"gradient at checkpoint step {step} of {args.workdir}, on {batch_size} training "
        f"examples (epoch {position.epoch}, from batch {position.batch}); batch loss {loss:.6f}"
    )
    print(format_table(summarize(grads)))
    print(f"global norm {global_norm(grads):.6f}")
    if args.save is not None:
        save_npz(args.save, grads)
        print(f"saved to {args.save}")
    return 0


cli_main = cli.run_command(PROG, main)

if __name__ == "__main__":
    cli.exit_process(cli_main())
