"""``python -m jaxcnn.summary``: a network layer by layer, with the tutorial's arithmetic.

The arithmetic and the table are :mod:`jaxcnn.inspection.layer_shapes`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from jaxcnn import models
from jaxcnn.cli import ArgumentParser, exit_process, run_command
from jaxcnn.config import positive_int
from jaxcnn.inspection.layer_shapes import format_summary, summarize

PROG = "python -m jaxcnn.summary"


def parse_input_shape(text: str) -> tuple[int, int, int]:
    """Parse ``H,W,C`` into three positive integers.

    >>> parse_input_shape("224,224,3")
    (224, 224, 3)
    """
    parts = text.split(",")
    try:
        values = tuple(int(part) for part in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not H,W,C: three positive integers, such as 28,28,1"
        )
    return values  # type: ignore[return-value]


def build_parser() -> ArgumentParser:
    """Return the command-line parser."""
    parser = ArgumentParser(
        prog=PROG,
        description="Print a network layer by layer: each layer's output shape, how it "
        "follows from the tutorial's formula (W + 2P - K)/S + 1, and its parameter count "
        "(F*K*K*C + F for a convolution), then the total. Shapes come from jax.eval_shape, "
        "so nothing is allocated.",
    )
    parser.add_argument(
        "--model",
        default="cnn",
        choices=list(models.MODELS),
        help="the network (default: %(default)s)",
    )
    parser.add_argument(
        "--input-shape",
        type=parse_input_shape,
        default=(28, 28, 1),
        metavar="H,W,C",
        help="one image's height, width and channels (default: 28,28,1, MNIST's); inputs "
        "with a side under 64 get VGG's and ResNet's small-image stems",
    )
    parser.add_argument(
        "--num-classes",
        type=positive_int,
        default=10,
        metavar="K",
        help="outputs of the last layer (default: %(default)s)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Print the summary; return the process exit code."""
    args = build_parser().parse_args(argv)
    print(format_summary(summarize(args.model, args.input_shape, args.num_classes)))
    return 0


cli_main = run_command(PROG, main)

if __name__ == "__main__":
    exit_process(cli_main())
