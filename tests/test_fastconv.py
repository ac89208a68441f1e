"""The first layer's convolution as shifted multiply-adds: values and gradients as XLA's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn import models
from jaxcnn.models import cpu_forms as fastconv
from jaxcnn.training.step import to_float_images

PAD = ((2, 2), (2, 2))


def first_layer(seed: int = 0) -> jax.Array:
    """The CNN's initial conv1 kernel, (5, 5, 1, 16)."""
    params = models.CNN().init(jax.random.key(seed), jnp.zeros((1, 28, 28, 1)))["params"]
    return params["conv1"]["conv"]["kernel"]


def flax_call(images: jax.Array, kernel: jax.Array) -> jax.Array:
    """``fastconv.conv_general_dilated`` called as flax's ``nn.Conv`` calls it."""
    numbers = lax.conv_dimension_numbers(images.shape, kernel.shape, fastconv.NHWC)
    return fastconv.conv_general_dilated(
        images, kernel, (1, 1), PAD, dimension_numbers=numbers, feature_group_count=1
    )


def test_values_and_gradients_match_xla_convolution_on_real_images(mnist):
    images = to_float_images(mnist["train"].images[:32])
    kernel = first_layer()
    expected, expected_vjp = jax.vjp(
        lambda x, w: fastconv.reference_conv(x, w, PAD), images, kernel
    )
    got, got_vjp = jax.vjp(flax_call, images, kernel)
    np.testing.assert_allclose(jax.jit(flax_call)(images, kernel), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    cotangent = jax.random.normal(jax.random.key(1), expected.shape)
    for ours, xla in zip(jax.jit(got_vjp)(cotangent), expected_vjp(cotangent), strict=True):
        np.testing.assert_allclose(ours, xla, rtol=1e-5, atol=1e-6)


def test_the_cpu_program_runs_no_convolution_for_one_input_channel():
    images, kernel = jnp.zeros((4, 28, 28, 1)), first_layer()
    forward = jax.jit(flax_call).lower(images, kernel).compile().as_text()
    assert "convolution(" not in forward
    weight_gradient = jax.jit(jax.grad(lambda w: jnp.sum(flax_call(images, w) ** 2)))
    # the gradient is XLA's own convolution, for the weights only
    assert weight_gradient.lower(kernel).compile().as_text().count("convolution(") == 1


def test_other_convolutions_are_xla_s_own():
    images = jax.random.normal(jax.random.key(2), (2, 9, 9, 3))
    kernel = jax.random.normal(jax.random.key(3), (3, 3, 3, 4))
    numbers = lax.conv_dimension_numbers(images.shape, kernel.shape, fastconv.NHWC)
    for strides, padding in [((1, 1), ((1, 1), (1, 1))), ((2, 2), "SAME")]:
        expected = lax.conv_general_dilated(
            images, kernel, strides, padding, dimension_numbers=numbers
        )
        got = fastconv.conv_general_dilated(
            images, kernel, strides, padding, dimension_numbers=numbers
        )
        np.testing.assert_array_equal(got, expected)
    one_channel = images[..., :1]
    strided = lax.conv_general_dilated(
        one_channel, kernel[:, :, :1], (2, 2), "SAME", dimension_numbers=numbers
    )
    np.testing.assert_array_equal(
        fastconv.conv_general_dilated(
            one_channel, kernel[:, :, :1], (2, 2), "SAME", dimension_numbers=numbers
        ),
        strided,
    )
