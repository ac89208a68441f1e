"""``python -m jaxcnn.runs [DIR]``: the training runs under ``./runs`` (or DIR), one line each.

For each work dir (a folder holding ``config.json``): its model and dataset, the steps
taken, the best and the last test accuracy measured, its status and its newest
checkpoint. The status comes from ``status.json``, which ``jaxcnn.train`` writes when
it starts (running) and when it ends (finished, interrupted, failed); a run whose file
still says running while no process holds its lock was killed without a word
(SIGKILL, a crash, a power cut) and is listed as ``interrupted (killed)``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxcnn.cli import ArgumentParser, exit_process, run_command
from jaxcnn.errors import UsageError
from jaxcnn.training import workdir
from jaxcnn.training.checkpoints import CHECKPOINT_DIR, Checkpoints

PROG = "python -m jaxcnn.runs"
COLUMNS = (
    ("run", "run"),
    ("model", "model"),
    ("dataset", "dataset"),
    ("steps", "steps"),
    ("best_test_accuracy", "best test"),
    ("last_test_accuracy", "last test"),
    ("status", "status"),
    ("newest_checkpoint", "newest checkpoint"),
)


def find_runs(root: Path) -> list[Path]:
    """Return the work dirs in ``root`` (its subfolders holding a config), by name.

    ``root`` itself is returned if it is a work dir.
    """
    if (root / workdir.CONFIG).is_file():
        return [root]
    return sorted(path for path in root.iterdir() if (path / workdir.CONFIG).is_file())


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Return the records of ``path``'s ``metrics.jsonl``; none, with a note, if it is damaged.

    One damaged run does not hide the others: its row shows no accuracy.
    """
    try:
        return workdir.read_metrics(path)
    except UsageError as error:
        print(f"note: {error}; its accuracies are left out", file=sys.stderr)
        return []


def newest_checkpoint(path: Path) -> int | None:
    """Return the step of ``path``'s newest complete checkpoint, or None."""
    if not (path / CHECKPOINT_DIR).is_dir():
        return None
    checkpoints = Checkpoints(path, read_only=True)
    try:
        return checkpoints.latest_step()
    finally:
        checkpoints.close()


def status_of(path: Path, status: dict[str, Any] | None, finished: bool) -> str:
    """Say how the run in ``path`` stands, from its ``status.json`` (None if it has none).

    A run from before ``status.json`` existed is ``finished`` if it wrote its summary,
    else ``unknown``.
    """
    if status is None:
        return workdir.FINISHED if finished else "unknown"
    state = status.get("status", "unknown")
    if state == workdir.RUNNING:
        return workdir.RUNNING if workdir.in_use(path) else f"{workdir.INTERRUPTED} (killed)"
    reason = status.get("reason")
    return f"{state} ({reason})" if reason and state != workdir.FINISHED else state


def describe_run(path: Path) -> dict[str, Any]:
    """Return one run's row: the values of :data:`COLUMNS` (accuracies as fractions)."""
    config = workdir.read_json(path / workdir.CONFIG) or {}
    status = workdir.read_json(path / workdir.STATUS)
    summary = workdir.read_json(path / workdir.SUMMARY)
    records = read_metrics(path)
    checkpoint = newest_checkpoint(path)
    measured = [(r["step"], r["test_accuracy"]) for r in records if "test_accuracy" in r]
    if summary is not None and "test_accuracy" in summary:
        measured.append((summary.get("steps", 0), summary["test_accuracy"]))
    last_step = max([step for step, _ in measured] + [checkpoint or 0])
    steps = status.get("step") if status else None
    if steps is None or (status or {}).get("status") == workdir.RUNNING:
        steps = last_step
    return {
        "run": path.name,
        "model": config.get("model", "?"),
        "dataset": config.get("dataset", "?"),
        "steps": steps,
        "best_test_accuracy": max((accuracy for _, accuracy in measured), default=None),
        "last_test_accuracy": max(measured, key=lambda m: m[0])[1] if measured else None,
        "status": status_of(path, status, summary is not None),
        "newest_checkpoint": checkpoint,
    }


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Return ``rows`` as an aligned text table with a header."""

    def cell(key: str, value: Any) -> str:
        if value is None:
            return "-"
        return f"{100 * value:.2f}%" if key.endswith("accuracy") else str(value)

    table = [[title for _, title in COLUMNS]]
    table += [[cell(key, row[key]) for key, _ in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        for line in table
    )


def build_parser() -> ArgumentParser:
    """Return the command-line parser."""
    parser = ArgumentParser(
        prog=PROG,
        description="List the jaxcnn training runs in a folder: model, dataset, steps taken, "
        "best and last test accuracy, status (running, finished, interrupted, failed) and "
        "newest checkpoint.",
    )
    parser.add_argument(
        "dir",
        nargs="?",
        default="runs",
        metavar="DIR",
        help="folder holding run work dirs, or a work dir (default: ./runs)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list of the rows")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """List the runs; return the exit code."""
    args = build_parser().parse_args(argv)
    root = Path(args.dir)
    if not root.is_dir():
        raise UsageError(f"DIR {args.dir!r} is not an existing folder")
    rows = [describe_run(path) for path in find_runs(root)]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        print(format_table(rows))
    else:
        print(f"no runs in {args.dir} (no folder there holds a {workdir.CONFIG})")
    return 0


cli_main = run_command(PROG, main)

if __name__ == "__main__":
    exit_process(cli_main())
