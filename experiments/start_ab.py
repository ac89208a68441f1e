"""Process start to the first training step of two jaxcnn source trees, side by side.

For a change to the start of a job: each round starts ``python -m jaxcnn.train`` once
from each tree (alternating which goes first), with an empty compilation cache and with
a warm one (that tree's own, filled before the first round), and times the arrival of
its ``compiled ...`` line, after which the loop dispatches the first step.

    git worktree add /tmp/before <commit>
    python experiments/start_ab.py --before /tmp/before --after . --data-dir DIR [--rounds 6]

The trees run with this interpreter, from their own folders (``python -m`` puts the
folder first on ``sys.path``), on a data dir already prepared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def seconds_to_first_step(tree: str, data_dir: str, cache: str) -> float:
    """Start a 2-step job from ``tree`` with compilation cache ``cache``; return the
    seconds from launch to its ``compiled`` line."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "JAXCNN_COMPILATION_CACHE": cache}
    with tempfile.TemporaryDirectory(prefix="start_ab_") as work:
        argv = ["--data-dir", data_dir, "--workdir", f"{work}/run", "--max-steps", "2"]
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "jaxcnn.train", *argv, "--no-progress"],
            cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )  # fmt: skip
        arrived = None
        for line in process.stdout:
            if arrived is None and line.startswith("compiled"):
                arrived = time.perf_counter() - started
        if process.wait() != 0 or arrived is None:
            raise SystemExit(f"start_ab: the job from {tree} failed (exit {process.returncode})")
    return arrived


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the source tree without the change")
    parser.add_argument("--after", required=True, help="the source tree with the change")
    parser.add_argument("--data-dir", required=True, help="a prepared tfds data dir")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    trees = {"before": args.before, "after": args.after}
    times: dict[str, list[float]] = {
        f"{name} {kind}": [] for name in trees for kind in ("empty", "warm")
    }
    with tempfile.TemporaryDirectory(prefix="start_ab_caches_") as caches:
        for name, tree in trees.items():  # fill each tree's warm cache
            seconds_to_first_step(tree, args.data_dir, f"{caches}/{name}")
        for round_index in range(args.rounds):
            order = list(trees) if round_index % 2 == 0 else list(trees)[::-1]
            for name in order:
                with tempfile.TemporaryDirectory(prefix="start_ab_empty_") as empty:
                    times[f"{name} empty"].append(
                        seconds_to_first_step(trees[name], args.data_dir, empty)
                    )
                times[f"{name} warm"].append(
                    seconds_to_first_step(trees[name], args.data_dir, f"{caches}/{name}")
                )
    for label, values in times.items():
        each = ", ".join(f"{value:.2f}" for value in values)
        print(f"{label} cache: median {statistics.median(values):.2f} s ({each})")


if __name__ == "__main__":
    main()
