"""What a trained network computes, as arrays: kernels, feature maps, saliency.

The tutorial (sections 2.2.x) explains convolution through pictures: a kernel
slides over the image, every kernel makes one feature map (特征图), and the maps stack
into channels (28×28×1 → 14×14×16 → 7×7×32 in its CNN). This module returns those
things for a trained state; :mod:`jaxcnn.visualize` draws them and :mod:`jaxcnn.tb`
puts the kernels into TensorBoard.

- :func:`first_conv_path` and :func:`layer_kernel`: the weights of the first
  convolution the image meets, found by asking Flax (``capture_intermediates``) which
  ``nn.Conv`` runs first.
- :func:`feature_maps`: the output of each convolution block (the tutorial's
  Conv → ReLU → MaxPool, a VGG block, a ResNet basic block), read with Flax's
  ``capture_intermediates``, so they are the model's own values, not a re-computation.
- :func:`logit_saliency` and :func:`loss_saliency`: ``jax.grad`` of a class's logit and of
  the cross-entropy loss with respect to the input pixels: the same "gradient as a
  value" as for the weights, taken with respect to the image instead.

Images are NHWC floats in [0, 1], as the model sees them (``steps.to_float_images``);
a gradient is per unit of pixel intensity (1 = black to white). Everything runs in
inference mode (BatchNorm with its running statistics).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax.traverse_util import flatten_dict

from jaxcnn.models.cnn import ConvReluPool
from jaxcnn.models.resnet import BasicBlock
from jaxcnn.models.vgg import VGGBlock
from jaxcnn.training.state import PyTree, TrainState

#: The modules whose outputs are "the feature maps after a convolution block".
BLOCK_TYPES: tuple[type[nn.Module], ...] = (ConvReluPool, VGGBlock, BasicBlock)
#: Blocks returned by default: both of the tutorial's CNN, the first two of VGG-16 and ResNet.
DEFAULT_BLOCKS = 2

Filter = Callable[[nn.Module, str], bool]


def model_variables(state: TrainState) -> dict:
    """Return the variables ``state.apply_fn`` takes: parameters and batch statistics."""
    return {"params": state.params, **state.model_state}


def logits_of(state: TrainState, images: jax.Array) -> jax.Array:
    """Return the logits (N, classes) of float NHWC ``images`` in [0, 1], in inference mode."""
    return state.apply_fn(model_variables(state), images, train=False)


def captured_outputs(
    state: TrainState, images: jax.Array, keep: Filter
) -> tuple[jax.Array, list[tuple[str, jax.Array]]]:
    """Run the model on ``images`` and return its logits and the outputs of modules ``keep`` picks.

    ``keep(module, method_name)`` is Flax's ``capture_intermediates`` filter. The
    outputs come as ``(module path, value)`` in the order the forward pass computed
    them; the model runs eagerly (not under ``jit``, whose outputs would come back with
    their dict keys sorted instead).
    """
    logits, collections = state.apply_fn(
        model_variables(state),
        images,
        train=False,
        capture_intermediates=keep,
        mutable=["intermediates"],
    )
    outputs = [
        ("/".join(path[:-1]), value[0])  # path ends in the method's name; sow keeps a tuple
        for path, value in flatten_dict(collections["intermediates"]).items()
    ]
    return logits, outputs


def is_block(module: nn.Module, method_name: str) -> bool:
    """Return whether ``module.method_name`` is a convolution block's forward pass."""
    return method_name == "__call__" and isinstance(module, BLOCK_TYPES)


def is_conv(module: nn.Module, method_name: str) -> bool:
    """Return whether ``module.method_name`` is a convolution's forward pass."""
    return method_name == "__call__" and isinstance(module, nn.Conv)


def feature_maps(
    state: TrainState, images: jax.Array, blocks: int | None = DEFAULT_BLOCKS
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Return the logits of ``images`` and the feature maps after the first ``blocks`` blocks.

    Args:
        state: a trained (or fresh) state.
        images: float NHWC images in [0, 1].
        blocks: how many convolution blocks to return, in forward order; None for all.

    Returns:
        The logits (N, classes), and ``{block path: maps (N, H, W, channels)}`` in the
        order the forward pass computes them, e.g. ``conv1`` (N, 14, 14, 16) and
        ``conv2`` (N, 7, 7, 32) for the tutorial's CNN on MNIST.
    """
    logits, outputs = captured_outputs(state, images, is_block)
    return logits, dict(outputs[:blocks])


def first_conv_path(state: TrainState, image_shape: tuple[int, int, int]) -> tuple[str, ...]:
    """Return the parameter path of the first convolution an image of ``image_shape`` meets.

    For example ``("conv1", "conv")`` for the tutorial's CNN, ``("block1", "conv1")`` for
    VGG-16 and ``("stem_conv",)`` for ResNet.

    Raises:
        ValueError: the model has no ``nn.Conv``.
    """
    paths: list[str] = []

    def record_conv_paths(params: PyTree, model_state: PyTree, images: jax.Array) -> None:
        traced = state.replace(params=params, model_state=model_state)
        paths.extend(path for path, _ in captured_outputs(traced, images, is_conv)[1])

    # Traced for shapes only, arrays included: the order is read while tracing, and
    # nothing is computed or copied, whatever devices the state is on.
    images = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    jax.eval_shape(record_conv_paths, state.params, state.model_state, images)
    if not paths:
        raise ValueError("the model has no convolution")
    return tuple(paths[0].split("/"))


def layer_kernel(params: dict, path: tuple[str, ...]) -> jax.Array:
    """Return the ``kernel`` of the layer at ``path`` in ``params``.

    With :func:`first_conv_path`, the first layer's kernels, (height, width, in
    channels, out channels): (5, 5, 1, 16) for the tutorial's CNN on MNIST, sixteen 5×5
    kernels on one channel.
    """
    for name in path:
        params = params[name]
    return params["kernel"]


def logit_saliency(state: TrainState, image: jax.Array, class_index: int) -> jax.Array:
    """Return d logit[``class_index``] / d pixel for one float HWC ``image``; shaped like it.

    Where it is large, changing that pixel changes the class's score most: the pixels
    the decision for that class rests on, to first order.
    """

    def class_logit(pixels: jax.Array) -> jax.Array:
        return logits_of(state, pixels[None])[0, class_index]

    return jax.grad(class_logit)(image)


def loss_saliency(state: TrainState, image: jax.Array, label: int) -> jax.Array:
    """Return d loss / d pixel for one float HWC ``image`` with class ``label``; shaped like it.

    The loss is the cross-entropy the training step minimises. Moving each pixel
    against this gradient makes the image look more like ``label`` to the network.
    """

    def loss(pixels: jax.Array) -> jax.Array:
        logits = logits_of(state, pixels[None])
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.array([label]))[0]

    return jax.grad(loss)(image)


def tile_grid(tiles: np.ndarray, columns: int, gap: int = 1) -> np.ndarray:
    """Return (N, h, w) ``tiles`` laid out in rows of ``columns``, NaN between and after them.

    >>> tile_grid(np.ones((3, 2, 2)), columns=2).shape
    (5, 5)
    """
    count, height, width = tiles.shape
    rows = -(-count // columns)
    grid = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap), np.nan)
    for index, tile in enumerate(tiles):
        top, left = (index // columns) * (height + gap), (index % columns) * (width + gap)
        grid[top : top + height, left : left + width] = tile
    return grid


def kernel_tiles(kernels: np.ndarray) -> np.ndarray:
    """Return HWIO ``kernels`` as (out × in, h, w) tiles: each output channel's, input by input."""
    height, width, inputs, outputs = kernels.shape
    return np.asarray(kernels).transpose(3, 2, 0, 1).reshape(outputs * inputs, height, width)
