"""ResNet-18 and ResNet-34 with basic residual blocks and BatchNorm, in NHWC.

The tutorial's section 3.2: a deeper network is not always better, but one whose blocks
can pass their input straight through (``relu(F(x) + x)``) is at least no worse than a
shallower one. Each basic block is two 3×3 convolutions with BatchNorm; its shortcut is
the identity where the shape is kept, and a 1×1 convolution with stride 2 plus
BatchNorm (a projection) where a stage halves the map and widens the channels. The four
stages have 64, 128, 256 and 512 channels and 2, 2, 2, 2 blocks (ResNet-18) or 3, 4, 6,
3 (ResNet-34); global average pooling and one dense layer follow. At 224×224×3 and 1000
classes they have 11,689,512 and 21,797,672 parameters, torchvision's counts:
convolutions carry no bias, each BatchNorm a scale and a bias per channel. BatchNorm's
running mean and variance are not parameters; they live in the ``batch_stats``
collection (the train state's ``model_state``), are updated by every training step
(momentum 0.1 as PyTorch counts it, over the real examples of a batch only), used
instead of the batch's statistics in evaluation, and checkpointed with the state.

The 224×224 stem is a 7×7 convolution with stride 2 and 3×3 max-pooling with stride 2:
224 → 112 → 56. Small images (a side under 64, see
:func:`jaxcnn.models.layers.is_small_image`) would be at 7×7 after that stem and 1×1 after
the second stage, with two stages of 3×3 convolutions left running on a single pixel
and its zero padding. So for them the stem is one 3×3 convolution with stride 1 and no
pooling, as He et al. did for CIFAR-10: 28 → 28, then the stages give 28, 14, 7 and 4,
and the average pool reads a 4×4×512 map. For 28×28×1 and 10 classes that is
11,172,810 parameters (ResNet-18) and 21,280,970 (ResNet-34).
"""

from __future__ import annotations

import jax
from flax import linen as nn

from jaxcnn.models.layers import (
    GlobalAveragePool,
    MaxPool,
    batch_norm,
    example_mask,
    he_normal_fan_out,
    is_small_image,
    torch_dense,
)

#: Channels of the four stages.
STAGE_FEATURES = (64, 128, 256, 512)


def conv(features: int, kernel: int, stride: int, name: str) -> nn.Conv:
    """Return a bias-free ``kernel``×``kernel`` convolution padded by ``kernel // 2``."""
    pad = kernel // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=stride,
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        kernel_init=he_normal_fan_out,
        name=name,
    )


class BasicBlock(nn.Module):
    """``relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x))``.

    The shortcut is ``x`` itself when the block keeps the shape, else a projection:
    a 1×1 convolution with the block's stride, then BatchNorm.
    """

    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, mask: jax.Array | None) -> jax.Array:
        """Apply the block; ``mask`` is BatchNorm's (N, 1, 1, 1) example mask or None."""
        y = conv(self.features, 3, self.stride, "conv1")(x)
        y = nn.relu(batch_norm("bn1", train)(y, mask=mask))
        y = conv(self.features, 3, 1, "conv2")(y)
        y = batch_norm("bn2", train)(y, mask=mask)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = conv(self.features, 1, self.stride, "shortcut_conv")(x)
            shortcut = batch_norm("shortcut_bn", train)(shortcut, mask=mask)
        return nn.relu(y + shortcut)


class ResNet(nn.Module):
    """A ResNet of basic blocks (see the module docstring).

    Attributes:
        stage_sizes: blocks in each of the four stages.
        num_classes: width of the last dense layer.
    """

    stage_sizes: tuple[int, ...] = (2, 2, 2, 2)
    num_classes: int = 1000

    @nn.compact
    def __call__(
        self, images: jax.Array, train: bool = False, mask: jax.Array | None = None
    ) -> jax.Array:
        """Return logits ``(batch, num_classes)``; ``mask`` (N,) marks the real examples."""
        bn_mask = example_mask(mask)
        small = is_small_image(images)
        x = conv(64, 3 if small else 7, 1 if small else 2, "stem_conv")(images)
        x = nn.relu(batch_norm("stem_bn", train)(x, mask=bn_mask))
        if not small:
            x = MaxPool(3, 2, 1, name="stem_pool")(x)
        stages = zip(self.stage_sizes, STAGE_FEATURES, strict=True)
        for stage, (blocks, features) in enumerate(stages):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                name = f"stage{stage + 1}_block{block + 1}"
                x = BasicBlock(features, stride, name=name)(x, train, bn_mask)
        x = GlobalAveragePool(name="avgpool")(x)
        return torch_dense(self.num_classes, x.shape[-1], name="fc")(x)


class ResNet18(ResNet):
    """ResNet-18: 2, 2, 2, 2 basic blocks."""

    stage_sizes: tuple[int, ...] = (2, 2, 2, 2)


class ResNet34(ResNet):
    """ResNet-34: 3, 4, 6, 3 basic blocks."""

    stage_sizes: tuple[int, ...] = (3, 4, 6, 3)
