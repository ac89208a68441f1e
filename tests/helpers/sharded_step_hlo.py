"""Print, as JSON, how many all-reduce ops the compiled train step has on 1 and on N devices.

Run as ``python sharded_step_hlo.py N``; it makes N CPU devices itself, so it must be a
process of its own.
"""

from __future__ import annotations

import json
import sys

import jax
import numpy as np

from jaxcnn.config import TrainConfig
from jaxcnn.data import Split
from jaxcnn.training.compile import compile_steps, example_batches
from jaxcnn.training.parallel import create_placement
from jaxcnn.training.state import new_state


def all_reduce_count(devices: int) -> int:
    """Return the number of all-reduce ops in the optimized HLO of the step on ``devices``."""
    config = TrainConfig()
    split = Split(np.zeros((100, 28, 28, 1), np.uint8), np.zeros(100, np.int32))
    placement = create_placement(devices)
    state = placement.replicate(new_state(config))
    batches = example_batches(config, {"train": split, "test": split}, placement)
    compiled = compile_steps(state, *batches, placement)
    return compiled.step.as_text().count("all-reduce(")


if __name__ == "__main__":
    count = int(sys.argv[1])
    jax.config.update("jax_num_cpu_devices", count)
    print(json.dumps({"1": all_reduce_count(1), str(count): all_reduce_count(count)}))
