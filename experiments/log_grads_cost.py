"""What --log-grads costs: the plain step and the step with gradient statistics, timed.

Both are compiled as jaxcnn.train compiles them, then run alternately on the same
batch; the plain one is what every step between log points runs, with or without
--log-grads. Prints the median time of each over ``--repeats`` rounds.

    python experiments/log_grads_cost.py [--repeats 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from jaxcnn.config import TrainConfig
from jaxcnn.data import Split
from jaxcnn.training.compile import compile_steps, example_batches, resolve_chunks
from jaxcnn.training.parallel import create_placement
from jaxcnn.training.state import new_state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    config = TrainConfig(log_grads=True)
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (1000, 28, 28, 1), np.uint8), rng.integers(0, 10, 1000))
    placement = create_placement(1)
    state = placement.replicate(new_state(config))
    batch, eval_batch = example_batches(config, {"train": split, "test": split}, placement)
    chunks = resolve_chunks(None, state, placement, config.batch_size)  # as training
    compiled = compile_steps(state, batch, eval_batch, placement, log_grads=True, chunks=chunks)
    times = {"plain step": [], "step with gradient statistics": []}
    functions = {
        "plain step": compiled.step,
        "step with gradient statistics": compiled.step_with_grad_stats,
    }
    for _ in range(args.repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            state, metrics = function(state, batch)
            jax.block_until_ready((state, metrics))
            times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        print(f"{name:<30} median {1000 * statistics.median(values):.2f} ms over {len(values)}")


if __name__ == "__main__":
    main()
