"""Helpers shared by the CLI tests."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image


def save_pngs(images: np.ndarray, folder: Path, stem: str) -> list[str]:
    """Save uint8 (N, H, W, 1) ``images`` as ``folder/<stem><i>.png``; return their paths."""
    paths = []
    for index, image in enumerate(images):
        path = folder / f"{stem}{index}.png"
        Image.fromarray(image[:, :, 0]).save(path)
        paths.append(str(path))
    return paths


def run_summary(workdir: Path) -> dict:
    """Return the ``summary.json`` a finished run wrote into ``workdir``."""
    return json.loads((workdir / "summary.json").read_text())


def run_metrics(workdir: Path) -> list[dict]:
    """Return the records of ``metrics.jsonl`` in ``workdir``, one per log line, in order."""
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def compiled_line(output: str) -> str:
    """Return the job's "compiled train and eval steps ..." line from its standard output."""
    return next(line for line in output.splitlines() if line.startswith("compiled "))


def run_cli(cli_main: Callable[[list[str]], int], argv: list[str]) -> int:
    """Run a command's ``cli_main`` in this process; argparse's exits arrive as SystemExit."""
    try:
        return cli_main(argv)
    except SystemExit as stop:
        return int(stop.code)


#: Python as a terminal starts it, in place of ``sys.executable`` for a process that a test
#: sends SIGINT: SIGINT's default action restored and SIGINT unblocked, then the command
#: itself (same process, through exec). A test worker may run with SIGINT ignored or
#: blocked, and a child inherits both.
PYTHON_WITH_CTRL_C = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])",
]


def signal_masks(pid: int) -> str:
    """Return the blocked, ignored and caught signal masks of process ``pid`` (Linux)."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return " ".join(line for line in lines if line.startswith(("SigBlk", "SigIgn", "SigCgt")))


def file_digests(folder: Path) -> dict[str, str]:
    """Return the SHA-256 of every file under ``folder``, by relative path."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Return the scalars of the event files in ``folder`` as TensorBoard reads them.

    Uses TensorBoard's own reader (``EventAccumulator``, keeping every event), so a
    duplicated step or a file TensorBoard cannot parse shows up here.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    accumulator = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    accumulator.Reload()
    return {
        tag: [(event.step, float(make_ndarray(event.tensor_proto))) for event in events]
        for tag in accumulator.Tags()["tensors"]
        if (events := accumulator.Tensors(tag))
    }


def read_pictures(folder: Path) -> tuple[dict, dict]:
    """Return every image and histogram event by tag, as TensorBoard's reader returns them.

    All events are kept (no sampling), and none is dropped for coming out of order, so a
    step written twice would show twice.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(
        str(folder), size_guidance={"images": 0, "histograms": 0}, purge_orphaned_data=False
    )
    accumulator.Reload()
    tags = accumulator.Tags()
    images = {tag: accumulator.Images(tag) for tag in tags["images"]}
    histograms = {tag: accumulator.Histograms(tag) for tag in tags["histograms"]}
    return images, histograms
