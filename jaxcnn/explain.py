"""``python -m jaxcnn.explain``: one training step of the tutorial's CNN, by hand, checked.

The step by hand, in plain ``jax.numpy``, is :mod:`jaxcnn.inspection.hand_step`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxcnn import data
from jaxcnn.cli import (
    ArgumentParser,
    add_data_flags,
    exit_process,
    load_data,
    prepare_jax,
    run_command,
)
from jaxcnn.config import TrainConfig
from jaxcnn.inspection.hand_step import TOLERANCE, format_checks, walk_step
from jaxcnn.training.resources import check_batch_size
from jaxcnn.training.state import new_state

PROG = "python -m jaxcnn.explain"


def build_parser() -> ArgumentParser:
    """Return the command-line parser."""
    parser = ArgumentParser(
        prog=PROG,
        description="Take one training step of the tutorial's CNN by hand, in plain "
        "jax.numpy (forward, every layer's backward, Adam), on a real batch, and print "
        "each stage with its largest difference from jax autodiff and from optax. Exit "
        f"code 1 if any relative difference exceeds {TOLERANCE:g}.",
    )
    parser.add_argument("--seed", type=int, default=0, help="initial weights and batch order")
    parser.add_argument("--batch-size", type=int, default=64, help="examples in the batch")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="Adam's step size")
    add_data_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Walk one step; return 0 if every stage agrees, 1 if one does not."""
    args = build_parser().parse_args(argv)
    prepare_jax()  # the XLA:CPU switches and the compilation cache
    config = TrainConfig(
        seed=args.seed, batch_size=args.batch_size, learning_rate=args.learning_rate
    ).validate()
    train_split = load_data(args, config.dataset, ("train",))["train"]
    check_batch_size("--batch-size", config.batch_size, config.dataset, "train", train_split)
    indices = data.epoch_permutation(config.seed, 0, len(train_split))[: config.batch_size]
    batch = data.make_batch(train_split, indices, np.ones(config.batch_size, np.float32))
    checks, _ = walk_step(new_state(config), batch, config.learning_rate)
    print(
        f"one training step by hand on the first {config.batch_size} images of epoch 0 "
        f"(seed {config.seed}), against jax autodiff and optax.adam:"
    )
    print(format_checks(checks))
    failed = [c.stage for c in checks if not c.ok]
    print(f"{len(checks) - len(failed)} of {len(checks)} stages agree within {TOLERANCE:g}")
    return 1 if failed else 0


cli_main = run_command(PROG, main)

if __name__ == "__main__":
    exit_process(cli_main())
