"""Time until a training run first shows a test accuracy, from process start.

    python experiments/time_to_accuracy.py --target 99.0 --seeds 0 1 -- --recipe fast

Runs ``python -m jaxcnn.train`` with the flags after ``--`` (plus ``--seed S`` and a
fresh ``--workdir``) for each seed, timestamps every log line as it is printed, and
reports the first one whose test accuracy reaches ``--target`` percent: seconds since
the process started (Python start, data loading and compilation included) and the
training step, and the run's final test accuracy. The data must be prepared (pass
``--data-dir``/``--manual-dir`` after ``--`` as for ``jaxcnn.train``).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ACCURACY = re.compile(r"test accuracy: ([0-9.]+)%")


def time_to_target(flags: list[str], seed: int, target: float, workdir: Path) -> dict:
    """Run one training job; return when it first reached ``target`` and how it ended."""
    command = [sys.executable, "-m", "jaxcnn.train", *flags, "--seed", str(seed)]
    start = time.perf_counter()
    process = subprocess.Popen(
        [*command, "--workdir", str(workdir), "--no-progress"],
        stdout=subprocess.PIPE,
        text=True,
    )
    reached = None
    for index, line in enumerate(process.stdout):
        match = ACCURACY.search(line)
        if reached is None and match and float(match.group(1)) >= target and "done" not in line:
            reached = {"seconds": time.perf_counter() - start, "log_line": index, "line": line}
    process.wait()
    total = time.perf_counter() - start
    summary = json.loads((workdir / "summary.json").read_text())
    return {
        "seed": seed,
        "reached": None if reached is None else round(reached["seconds"], 1),
        "reached_at": None if reached is None else reached["line"].split("\t")[0],
        "final_test_accuracy": summary["test_accuracy"],
        "train_seconds": round(summary["train_seconds"], 1),
        "process_seconds": round(total, 1),
    }


def main() -> None:
    """Parse the flags, run each seed, print one JSON line per run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=99.0, help="test accuracy, percent")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="-- then jaxcnn.train flags")
    args = parser.parse_args()
    flags = args.flags[1:] if args.flags[:1] == ["--"] else args.flags
    with tempfile.TemporaryDirectory() as scratch:
        for seed in args.seeds:
            result = time_to_target(flags, seed, args.target, Path(scratch) / f"seed{seed}")
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
