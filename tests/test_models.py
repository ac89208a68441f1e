"""The tutorial's CNN: layer shapes, parameter counts, PyTorch-style initialisation, pooling."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxcnn import models
from jaxcnn.models.cpu_forms import max_pool_2x2

BATCH = 8


def init_cnn(seed: int = 0):
    model = models.CNN()
    variables = model.init(jax.random.key(seed), jnp.zeros((1, 28, 28, 1)))
    return model, variables["params"]


def test_every_layer_output_shape():
    model, params = init_cnn()
    images = jax.random.uniform(jax.random.key(1), (BATCH, 28, 28, 1))
    logits, state = model.apply(
        {"params": params}, images, capture_intermediates=True, mutable=["intermediates"]
    )
    layers = state["intermediates"]
    chex.assert_shape(layers["conv1"]["conv"]["__call__"][0], (BATCH, 28, 28, 16))
    chex.assert_shape(layers["conv1"]["__call__"][0], (BATCH, 14, 14, 16))
    chex.assert_shape(layers["conv2"]["conv"]["__call__"][0], (BATCH, 14, 14, 32))
    chex.assert_shape(layers["conv2"]["__call__"][0], (BATCH, 7, 7, 32))
    chex.assert_shape(layers["out"]["__call__"][0], (BATCH, 10))
    chex.assert_shape(logits, (BATCH, 10))


def test_parameter_count_and_shapes():
    _, params = init_cnn()
    shapes = {
        "/".join(k.key for k in path): leaf.shape
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
    }
    assert shapes == {
        "conv1/conv/kernel": (5, 5, 1, 16),
        "conv1/conv/bias": (16,),
        "conv2/conv/kernel": (5, 5, 16, 32),
        "conv2/conv/bias": (32,),
        "out/kernel": (1568, 10),
        "out/bias": (10,),
    }
    counts = {name: math.prod(shape) for name, shape in shapes.items()}
    assert counts["conv1/conv/kernel"] + counts["conv1/conv/bias"] == 416
    assert counts["conv2/conv/kernel"] + counts["conv2/conv/bias"] == 12_832
    assert counts["out/kernel"] + counts["out/bias"] == 15_690
    assert sum(counts.values()) == 28_938


def test_initialisation_is_pytorch_default_uniform():
    """Every weight and bias is uniform in ±1/sqrt(fan_in), as torch's Conv2d/Linear."""
    _, params = init_cnn()
    fan_in = {"conv1/conv": 1 * 25, "conv2/conv": 16 * 25, "out": 1568}
    for layer, fan in fan_in.items():
        node = params
        for key in layer.split("/"):
            node = node[key]
        bound = 1 / math.sqrt(fan)
        for name in ("kernel", "bias"):
            values = np.asarray(node[name]).ravel()
            assert np.all(np.abs(values) <= bound), (layer, name)
            if values.size >= 400:  # enough draws to see the uniform's spread
                assert np.abs(values).max() > 0.95 * bound, (layer, name)
                np.testing.assert_allclose(values.std(), bound / math.sqrt(3), rtol=0.1)


def test_max_pool_2x2_matches_flax_max_pool():
    x = jax.random.normal(jax.random.key(2), (3, 14, 14, 5))
    expected = nn.max_pool(x, (2, 2), strides=(2, 2))
    np.testing.assert_array_equal(max_pool_2x2(x), expected)
    odd = jax.random.normal(jax.random.key(3), (2, 7, 7, 3))  # PyTorch drops the odd row/col
    np.testing.assert_array_equal(max_pool_2x2(odd), nn.max_pool(odd, (2, 2), (2, 2)))


def test_max_pool_2x2_gradient_is_autodiff_of_the_window_max_ties_included():
    # Without ties: the same gradient as flax's reduce_window pooling.
    x = jax.random.normal(jax.random.key(4), (3, 14, 14, 5))
    cotangent = jax.random.normal(jax.random.key(5), (3, 7, 7, 5))
    ours = jax.jit(jax.vjp(max_pool_2x2, x)[1])(cotangent)[0]
    flax_pool = jax.vjp(lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)), x)[1](cotangent)[0]
    np.testing.assert_array_equal(ours, flax_pool)

    # With ties (a coarse grid after ReLU; odd height): jnp.max's rule, shared equally.
    def window_max(x):
        x = x[:, :14]
        return x.reshape(3, 7, 2, 7, 2, 5).max(axis=(2, 4))

    tied = jnp.round(jax.nn.relu(jax.random.normal(jax.random.key(6), (3, 15, 14, 5))) * 2) / 2
    ours = jax.jit(jax.vjp(max_pool_2x2, tied)[1])(cotangent)[0]
    np.testing.assert_allclose(ours, jax.vjp(window_max, tied)[1](cotangent)[0], rtol=1e-6)
    maxima = tied[:, :14].reshape(3, 7, 2, 7, 2, 5) == window_max(tied)[:, :, None, :, None]
    assert np.any(maxima.sum(axis=(2, 4)) > 1)  # the data does hold ties


def test_different_seeds_give_different_weights():
    _, a = init_cnn(0)
    _, b = init_cnn(1)
    assert not np.array_equal(a["out"]["kernel"], b["out"]["kernel"])
