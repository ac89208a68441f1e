"""``python -m jaxcnn.train``: the seed tutorial's training job.

Trains the seed's CNN on MNIST with its settings (3 epochs, batch 64, Adam 1e-3),
printing the seed's log line every 100 batches, and writes ``metrics.jsonl`` and
``summary.json`` to the work dir.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import optax

from jaxcnn import data, loop, models, steps
from jaxcnn.cli import ArgumentParser, add_data_flags, run_command
from jaxcnn.config import TrainConfig, UsageError

PROG = "python -m jaxcnn.train"
DEFAULTS = TrainConfig()


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
        "--epochs",
        type=int,
        default=DEFAULTS.epochs,
        help="passes over the training set (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULTS.batch_size,
        help="training examples per step (default: %(default)s)",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=DEFAULTS.learning_rate,
        help="Adam's learning rate (default: %(default)s)",
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
        help="folder for metrics.jsonl and summary.json (default: a new folder under ./runs/)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Return the validated :class:`TrainConfig` that the parsed flags describe."""
    return TrainConfig(
        model=args.model,
        dataset=args.dataset,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        log_every=args.log_every,
        max_steps=args.max_steps,
        eval_batch_size=args.eval_batch_size,
    ).validate()


def check_workdir(workdir: str | None) -> None:
    """Refuse a ``--workdir`` that is a file or already holds a run's outputs.

    Raises:
        UsageError: naming the folder and the problem.

    """
    if workdir is None:
        return
    path = Path(workdir)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--workdir {workdir!r} exists and is not a folder")
    taken = [name for name in ("metrics.jsonl", "summary.json") if (path / name).exists()]
    if taken:
        raise UsageError(
            f"--workdir {workdir!r} already holds a run ({', '.join(taken)}); "
            "choose a new folder so nothing is overwritten"
        )


def create_workdir(workdir: str | None, config: TrainConfig) -> Path:
    """Create and return the work dir: ``workdir``, else a new ``runs/<time>-<dataset>-<model>``."""
    if workdir is not None:
        path = Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        return path
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{stamp}-{config.dataset}-{config.model}"
    path, suffix = base, 1
    while path.exists():
        path, suffix = base.with_name(f"{base.name}-{suffix}"), suffix + 1
    path.mkdir(parents=True)
    return path


def format_log_line(record: loop.LogRecord, num_train: int, steps_in_epoch: int) -> str:
    """Return the seed's log line for ``record`` (its fields, in English)."""
    percent = 100.0 * record.batch / steps_in_epoch
    return (
        f"epoch {record.epoch} [{record.images_seen}/{num_train} ({percent:.0f}%)]\t"
        f"loss: {record.loss:.6f}\t"
        f"train accuracy: {100 * record.train_accuracy:.2f}%\t"
        f"test accuracy: {100 * record.test_accuracy:.2f}%"
    )


def write_json(path: Path, value: dict[str, Any]) -> None:
    """Write ``value`` as indented JSON to ``path``, via a temporary file and a rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    tmp.replace(path)


def train_and_evaluate(
    config: TrainConfig, splits: dict[str, data.Split], workdir: Path
) -> dict[str, Any]:
    """Train as ``config`` says, log to stdout and ``workdir``, and return the summary."""
    spec = data.DATASETS[config.dataset]
    model = models.create_model(config.model, spec.num_classes)
    state = steps.create_train_state(
        model,
        optax.adam(config.learning_rate),
        jax.random.key(config.seed),
        splits["train"].images.shape[1:],
    )
    train_fn, eval_fn, compile_seconds = loop.compile_steps(
        state, *loop.example_batches(config, splits)
    )
    print(f"compiled train and eval steps in {compile_seconds:.2f} s", flush=True)
    num_train = len(splits["train"])
    steps_in_epoch = data.steps_per_epoch(num_train, config.batch_size)
    metrics_path = workdir / "metrics.jsonl"

    def on_log(record: loop.LogRecord) -> None:
        print(format_log_line(record, num_train, steps_in_epoch), flush=True)
        with metrics_path.open("a") as metrics_file:
            metrics_file.write(json.dumps(record.__dict__) + "\n")

    result = loop.train(config, splits, state, train_fn, eval_fn, on_log)
    summary = {
        "test_accuracy": result.test.accuracy,
        "test_loss": result.test.loss,
        "steps": result.steps,
        "epochs": result.epochs,
        "train_seconds": result.train_seconds,
        "compile_seconds": compile_seconds,
        "backend": jax.default_backend(),
        "devices": [str(device) for device in jax.devices()],
        "config": config.to_dict(),
    }
    write_json(workdir / "summary.json", summary)
    print(
        f"done: {result.steps} steps, test accuracy {100 * result.test.accuracy:.2f}%, "
        f"test loss {result.test.loss:.4f}, {result.train_seconds:.1f} s training; "
        f"wrote {workdir}",
        flush=True,
    )
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Run the training job; return the process exit code."""
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    check_workdir(args.workdir)
    data_dir = data.resolve_data_dir(args.data_dir)
    manual_dir = data.resolve_manual_dir(args.manual_dir)
    print(f"backend: {jax.default_backend()}, devices: {jax.devices()}", flush=True)
    splits = data.load_dataset(config.dataset, data_dir, manual_dir)
    workdir = create_workdir(args.workdir, config)
    write_json(workdir / "config.json", config.to_dict())
    train_and_evaluate(config, splits, workdir)
    return 0


cli_main = run_command(PROG, main)

if __name__ == "__main__":
    sys.exit(cli_main())
