"""XLA:CPU switches, measured: the tutorial's train step, a test pass, and whether numbers change.

    python experiments/xla_cpu_flags.py --data-dir DIR [--rounds 3]

Each candidate ``$XLA_FLAGS`` runs in a fresh process (XLA reads the variable once), in
alternating rounds. Each process times the compiled training step at batch 64 in the
loop's 4 chunks (median of rounds of 50 steps, ms) and one test pass over the 10,000 test
images in batches of 1000 (median of 5, ms), then trains 100 steps from seed 0 on the
real data and prints the SHA-256 of the parameters, which must match the baseline's for
a switch to be taken. ``jaxcnn.xla_flags`` holds what was chosen.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CANDIDATES = {
    "XLA's defaults": "--xla_cpu_prefer_vector_width=256",
    "512-bit vectors": "--xla_cpu_prefer_vector_width=512",
    "oneDNN": "--xla_cpu_prefer_vector_width=256 --xla_cpu_experimental_onednn_custom_call=true",
    "YNNPACK": "--xla_cpu_prefer_vector_width=256 "
    "--xla_cpu_experimental_ynn_fusion_type=individual_dot,individual_convolution",
}


def measure(data_dir: str, manual_dir: str) -> dict[str, float | str]:
    """In this process (flags already set): step and test-pass times, and the 100-step hash."""
    import jax

    from jaxcnn import data
    from jaxcnn.config import TrainConfig
    from jaxcnn.training.checkpoints import tree_sha256
    from jaxcnn.training.compile import step_function
    from jaxcnn.training.state import new_state
    from jaxcnn.training.step import eval_step

    config = TrainConfig().validate()
    splits = data.load_dataset(config.dataset, data_dir, manual_dir)
    step = jax.jit(step_function(4, False))
    test_pass = jax.jit(functools.partial(eval_step, chunks=4))
    state = new_state(config)
    order = data.epoch_permutation(config.seed, 0, len(splits["train"]))
    batches = [
        jax.device_put(data.make_batch(splits["train"], rows, mask))
        for rows, mask in data.batch_indices(order, config.batch_size)
    ]
    for batch in batches[:100]:
        state, _ = step(state, batch)
    params_sha256 = tree_sha256(jax.device_get(state.params))
    step_ms = []
    for _ in range(7):
        start = time.perf_counter()
        for batch in batches[100:150]:
            state, _ = step(state, batch)
        jax.block_until_ready(state)
        step_ms.append((time.perf_counter() - start) / 50 * 1e3)
    test = [jax.device_put(b) for b in data.fixed_batches(splits["test"], config.eval_batch_size)]
    pass_ms = []
    for _ in range(6):
        start = time.perf_counter()
        jax.block_until_ready([test_pass(state, batch) for batch in test])
        pass_ms.append((time.perf_counter() - start) * 1e3)
    return {
        "step_ms": statistics.median(step_ms[1:]),
        "test_pass_ms": statistics.median(pass_ms[1:]),
        "params_sha256": params_sha256,
        "cpu_has_avx512": "avx512f" in Path("/proc/cpuinfo").read_text(),
    }


def run_candidate(flags: str, args: argparse.Namespace) -> dict[str, float | str]:
    """Run :func:`measure` in a fresh process with ``$XLA_FLAGS`` set to ``flags``."""
    command = [sys.executable, __file__, "--data-dir", args.data_dir, "--measure"]
    command += ["--manual-dir", args.manual_dir]
    env = {**os.environ, "XLA_FLAGS": flags, "JAXCNN_COMPILATION_CACHE": "off"}
    output = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(output.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="tfds data dir with MNIST prepared")
    parser.add_argument("--manual-dir", default=str(REPO.parent / "shared/data/mnist"))
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.data_dir, args.manual_dir)))
        return
    results: dict[str, list[dict]] = {name: [] for name in CANDIDATES}
    for _ in range(args.rounds):
        for name, flags in CANDIDATES.items():
            results[name].append(run_candidate(flags, args))
    baseline = results["XLA's defaults"][0]
    print(
        "| XLA_FLAGS | train step, ms (each round) | test pass, ms (each round) "
        "| params_sha256 after 100 steps |"
    )
    print("| --- | --- | --- | --- |")
    for name, runs in results.items():
        step = statistics.median(run["step_ms"] for run in runs)
        test = statistics.median(run["test_pass_ms"] for run in runs)
        hashes = {run["params_sha256"] for run in runs}
        same = "the baseline's" if hashes == {baseline["params_sha256"]} else ", ".join(hashes)
        steps = ", ".join(f"{run['step_ms']:.2f}" for run in runs)
        tests = ", ".join(f"{run['test_pass_ms']:.0f}" for run in runs)
        print(
            f"| {name}: `{CANDIDATES[name]}` | {step:.2f} ({steps}) "
            f"| {test:.0f} ({tests}) | {same} |"
        )
    print(f"\nAVX-512: {baseline['cpu_has_avx512']}; medians of {args.rounds} alternating rounds.")


if __name__ == "__main__":
    main()
