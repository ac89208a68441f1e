"""Where the CPU train step's time goes: each convolution's forward and gradients, timed alone.

    python experiments/step_profile.py [--repeats 30]

For each of the tutorial's two convolution blocks at batch 64 it times, as separate jitted
functions: the convolution, its input gradient, its weight gradient, and the whole block
forward and backward in two orders that give the same numbers: conv + bias → ReLU →
2×2 max-pool (the tutorial's, what ``jaxcnn.models`` computes) and conv → max-pool → bias →
ReLU (which touches a quarter of the values after the convolution). For the first block,
whose input needs no gradient, the block's backward pass is the weight gradient only.
Medians, in ms.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxcnn.models.cpu_forms import max_pool_2x2

BATCH = 64


def conv2d_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Return the stride-1, zero-padded 'same' convolution of NHWC ``x`` with HWIO ``kernel``."""
    pad = kernel.shape[0] // 2
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), [(pad, pad)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


BLOCKS = {"conv1 (28×28×1 → 16)": (28, 1, 16), "conv2 (14×14×16 → 32)": (14, 16, 32)}


def median_ms(function: Callable[..., jax.Array], *args: jax.Array, repeats: int) -> float:
    """Return the median time of ``function(*args)``, compiled, over ``repeats`` rounds of 10."""
    compiled = jax.jit(function)
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(10):
            out = compiled(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / 10 * 1e3)
    return statistics.median(times)


def block_timings(size: int, cin: int, cout: int, repeats: int) -> dict[str, float]:
    """Return the timings of one block with ``cin`` → ``cout`` channels at ``size``×``size``."""
    key_x, key_w, key_g = jax.random.split(jax.random.key(0), 3)
    x = jax.random.uniform(key_x, (BATCH, size, size, cin))
    w = jax.random.normal(key_w, (5, 5, cin, cout)) * 0.1
    y = conv2d_same(x, w)
    pooled_cotangent = jax.random.normal(key_g, (BATCH, size // 2, size // 2, cout))

    bias = jnp.zeros(cout)

    def block_loss(form: Callable[[jax.Array, jax.Array], jax.Array]) -> Callable[..., jax.Array]:
        return lambda x, w: jnp.sum(form(x, w) * pooled_cotangent)

    def seed_order(x: jax.Array, w: jax.Array) -> jax.Array:
        return max_pool_2x2(jax.nn.relu(conv2d_same(x, w) + bias))

    def pool_first(x: jax.Array, w: jax.Array) -> jax.Array:
        return jax.nn.relu(max_pool_2x2(conv2d_same(x, w)) + bias)

    wrt = 1 if cin == 1 else (0, 1)  # the first layer's input gradient is never needed
    return {
        "conv forward": median_ms(conv2d_same, x, w, repeats=repeats),
        "conv input gradient": median_ms(
            lambda x, w, y: jax.vjp(conv2d_same, x, w)[1](y)[0], x, w, y, repeats=repeats
        ),
        "conv weight gradient": median_ms(
            lambda x, w, y: jax.vjp(conv2d_same, x, w)[1](y)[1], x, w, y, repeats=repeats
        ),
        "block fwd+bwd, conv+bias → ReLU → pool": median_ms(
            jax.grad(block_loss(seed_order), argnums=wrt), x, w, repeats=repeats
        ),
        "block fwd+bwd, conv → pool → bias → ReLU": median_ms(
            jax.grad(block_loss(pool_first), argnums=wrt), x, w, repeats=repeats
        ),
    }


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    results = {name: block_timings(*shape, args.repeats) for name, shape in BLOCKS.items()}
    names = list(BLOCKS)
    print(f"| ms, batch {BATCH} | " + " | ".join(names) + " |")
    print("| --- |" + " --- |" * len(names))
    for row in results[names[0]]:
        print(f"| {row} | " + " | ".join(f"{results[n][row]:.2f}" for n in names) + " |")
    print(f"jax {jax.__version__}, {jax.default_backend()}, {jax.devices()}")


if __name__ == "__main__":
    main()
