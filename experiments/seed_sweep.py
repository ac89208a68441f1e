"""Run the default training job for several seeds and report the final test accuracies.

The tutorial's result is one draw from a distribution: its weights and its shuffle
are random. This runs ``python -m jaxcnn.train`` with the defaults for each ``--seeds``
value (evaluating only at epoch starts, which leaves training unchanged) and prints
each run's final test accuracy with their mean, minimum and maximum.

    python experiments/seed_sweep.py --seeds 0 1 2 3 4 --data-dir DIR [--manual-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run_seed(seed: int, workdir: Path, data_flags: list[str]) -> dict:
    """Train with the defaults and ``seed``; return the run's summary."""
    command = [sys.executable, "-m", "jaxcnn.train", "--seed", str(seed), "--log-every", "1000"]
    subprocess.run([*command, *data_flags, "--workdir", str(workdir)], check=True)
    return json.loads((workdir / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--data-dir")
    parser.add_argument("--manual-dir")
    parser.add_argument("--out", type=Path, help="also write the results here as JSON")
    args = parser.parse_args()
    data_flags = [
        flag
        for name, value in (("--data-dir", args.data_dir), ("--manual-dir", args.manual_dir))
        if value
        for flag in (name, value)
    ]
    accuracies = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            summary = run_seed(seed, Path(tmp) / f"seed{seed}", data_flags)
            accuracies[seed] = summary["test_accuracy"]
    values = list(accuracies.values())
    print("seed  final test accuracy")
    for seed, accuracy in accuracies.items():
        print(f"{seed:>4}  {100 * accuracy:.2f}%")
    print(
        f"mean {100 * statistics.mean(values):.2f}%, min {100 * min(values):.2f}%, "
        f"max {100 * max(values):.2f}% over {len(values)} seeds"
    )
    if args.out:
        args.out.write_text(json.dumps({"accuracies": accuracies}, indent=2) + "\n")


if __name__ == "__main__":
    main()
