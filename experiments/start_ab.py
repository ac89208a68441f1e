"""Process start to the first training step of two jaxcnn source trees, side by side.

For a change to the start of a job, in jaxcnn's code or in its environment: each round
starts ``python -m jaxcnn.train`` once from each tree (alternating which goes first), with
an empty compilation cache and with a warm one (that tree's own, filled before the first
round), and times the arrival of its ``compiled ...`` line, after which the loop
dispatches the first step (``bench.seconds_to_first_step``, which ``bench.py
--start-rounds`` uses for one tree).

    git worktree add /tmp/before <commit>
    python experiments/start_ab.py --before /tmp/before --after . --data-dir DIR [--rounds 6]

For a change to the environment (a package's version), give the same tree twice and
each side's interpreter, from a virtual environment of its own::

    python experiments/start_ab.py --before . --before-python /tmp/old-venv/bin/python \
        --after . --data-dir DIR

With ``--resume`` each run resumes instead: it starts from a copy of a work dir whose run
stopped after one step (written once, by the ``before`` tree) and runs one step more.

The trees run with this interpreter unless ``--before-python`` or ``--after-python`` names
another, from their own folders, on a data dir already prepared, each with its jaxcnn
modules compiled to bytecode first (as in ``bench.py``).
"""

from __future__ import annotations

import argparse
import compileall
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench import REPO, seconds_to_first_step


def timed_start(
    args: argparse.Namespace,
    workdir: str,
    cache_dir: str,
    side: tuple[Path, str],
    template: str | None,
) -> float:
    """Return the seconds to the first step of a new run in ``workdir``, or, given the
    ``template`` work dir of a run stopped after one step, of that run resumed there;
    ``side`` is the source tree and the interpreter it runs with."""
    tree, python = side
    if template is None:
        return seconds_to_first_step(args, workdir, cache_dir, tree, python=python)
    shutil.copytree(template, workdir)
    return seconds_to_first_step(args, workdir, cache_dir, tree, max_steps=2, python=python)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the source tree without the change")
    parser.add_argument("--after", required=True, help="the source tree with the change")
    parser.add_argument("--before-python", default=sys.executable, help="its interpreter")
    parser.add_argument("--after-python", default=sys.executable, help="its interpreter")
    parser.add_argument("--data-dir", required=True, help="a prepared tfds data dir")
    parser.add_argument("--manual-dir", default=str(REPO.parent / "shared/data/mnist"))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--resume", action="store_true", help="time resumed runs")
    args = parser.parse_args()
    sides = {
        "before": (Path(args.before).resolve(), args.before_python),
        "after": (Path(args.after).resolve(), args.after_python),
    }
    times: dict[str, list[float]] = {
        f"{name} {kind}": [] for name in sides for kind in ("empty", "warm")
    }
    for tree, _ in sides.values():
        compileall.compile_dir(tree / "jaxcnn", quiet=1)
    with tempfile.TemporaryDirectory(prefix="start_ab_") as scratch:
        template = f"{scratch}/stopped-after-one-step" if args.resume else None
        if template:
            tree, python = sides["before"]
            seconds_to_first_step(args, template, f"{scratch}/cache-template", tree, python=python)
        for name, side in sides.items():  # fill each side's warm cache
            timed_start(args, f"{scratch}/fill-{name}", f"{scratch}/cache-{name}", side, template)
        for index in range(args.rounds):
            for name in list(sides) if index % 2 == 0 else list(sides)[::-1]:
                run, side = f"{scratch}/{name}-{index}", sides[name]
                times[f"{name} empty"].append(
                    timed_start(args, f"{run}-empty", f"{run}-cache", side, template)
                )
                times[f"{name} warm"].append(
                    timed_start(args, f"{run}-warm", f"{scratch}/cache-{name}", side, template)
                )
    for label, values in times.items():
        each = ", ".join(f"{value:.2f}" for value in values)
        print(f"{label} cache: median {statistics.median(values):.2f} s ({each})")


if __name__ == "__main__":
    main()
