"""``python -m jaxcnn.plot``: pictures of a run, drawn from its ``metrics.jsonl``.

Writes into the work dir ``loss.png`` (batch loss and test loss), ``accuracy.png``
(running train accuracy and test accuracy) and, for runs trained with ``--log-grads``,
``gradients.png`` (each layer's gradient norm and update-to-parameter ratio), all
against the training step.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from jaxcnn.cli import ArgumentParser, exit_process, run_command
from jaxcnn.inspection.curves import plot_curves, plot_gradients, read_records

PROG = "python -m jaxcnn.plot"


def build_parser() -> ArgumentParser:
    """Return the command-line parser."""
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--workdir", required=True, metavar="DIR", help="a jaxcnn.train work dir")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Draw the run's curves; return the exit code."""
    args = build_parser().parse_args(argv)
    path = Path(args.workdir)
    records = read_records(path)
    for written in plot_curves(records, path) + plot_gradients(records, path):
        print(f"wrote {written}")
    return 0


cli_main = run_command(PROG, main)

if __name__ == "__main__":
    exit_process(cli_main())
