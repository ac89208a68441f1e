"""VGG-16, as the tutorial's section 3.1 gives it, in NHWC.

Thirteen 3×3 convolutions (stride 1, padding 1, each followed by ReLU) in blocks of 2,
2, 3, 3 and 3, each block followed by 2×2 max-pooling with stride 2, then FC-4096,
FC-4096 and FC-N. At 224×224×3 and 1000 classes that is 138,357,544 parameters, the
count of torchvision's ``vgg16``: 14,714,688 in the convolutions, 102,764,544 +
16,781,312 + 4,097,000 in the three dense layers (the first reads 7×7×512 = 25,088
features). Weights are He-normal over fan-in (variance 2 / fan_in, which keeps the
activations' scale through each ReLU layer) and the last layer's LeCun-normal, biases 0.
torchvision draws the convolutions over fan-out and the dense layers with standard
deviation 0.01; with those, on 28×28 digits, Adam left the loss at ln 10 for the first
25 steps (batch 32, learning rate 1e-3 and 1e-4), while with these it falls. There is no
dropout: the tutorial lists none, and the training step carries no dropout key. Nor is
there torchvision's adaptive average pooling to 7×7 before the first dense layer; at
224×224 it does nothing, and at other sizes the first dense layer reads whatever the
last pooling leaves.

Small images (a side under 64 pixels, see :func:`jaxcnn.models.layers.is_small_image`):

- Five 2×2 poolings take 28 to 14, 7, 3, 1 and 0, so MNIST's 28×28 would vanish before
  the dense layers. The first convolution pads a side shorter than 32 up to 32 instead
  of by 1 (by 3 for 28: (28 + 2·3 − 3)/1 + 1 = 32), which is the same as zero-padding the
  image to 32×32 first, as LeNet-5 did with MNIST; the poolings then give 16, 8, 4, 2
  and 1, and the first dense layer reads 1×1×512.
- The dense layers are 512 wide instead of 4096 (``fc_features``, as VGG variants for
  CIFAR do): 4096-wide layers on 512 features would hold 19M parameters for what is a
  512-feature summary of a 28×28 image, and make each step several times slower on a CPU.
  For 28×28×1 and 10 classes the network has 15,243,978 parameters.
"""

from __future__ import annotations

import jax
from flax import linen as nn

from jaxcnn.models.layers import MaxPool, is_small_image

#: The hidden dense layers' weights: He-normal over fan-in (variance 2 / fan_in).
he_normal_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")

#: Output channels of the 13 convolutions, block by block: the tutorial's 2, 2, 3, 3, 3.
VGG16_BLOCKS: tuple[tuple[int, ...], ...] = (
    (64, 64),
    (128, 128),
    (256, 256, 256),
    (512, 512, 512),
    (512, 512, 512),
)
#: Width of the two hidden dense layers: the tutorial's for 224×224, and for small images.
FC_FEATURES = 4096
SMALL_FC_FEATURES = 512
#: The side a small image is padded up to, so that five poolings leave 1×1.
SMALL_PADDED_SIDE = 32

Padding = tuple[tuple[int, int], tuple[int, int]]


def first_conv_padding(height: int, width: int) -> Padding:
    """Return the first convolution's padding: 1, or up to 32 pixels for a shorter side.

    >>> first_conv_padding(224, 224)
    ((1, 1), (1, 1))
    >>> first_conv_padding(28, 27)
    ((3, 3), (3, 4))
    """

    def pad(side: int) -> tuple[int, int]:
        extra = max(0, SMALL_PADDED_SIDE - side)
        return 1 + extra // 2, 1 + extra - extra // 2

    return pad(height), pad(width)


class VGGBlock(nn.Module):
    """3×3 convolutions (stride 1) with ReLU, then 2×2 max-pooling with stride 2."""

    features: tuple[int, ...]
    first_padding: Padding = ((1, 1), (1, 1))

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Apply the block to NHWC ``x``."""
        for index, features in enumerate(self.features):
            x = nn.Conv(
                features,
                (3, 3),
                strides=1,
                padding=self.first_padding if index == 0 else ((1, 1), (1, 1)),
                kernel_init=he_normal_fan_in,
                bias_init=nn.initializers.zeros,
                name=f"conv{index + 1}",
            )(x)
            x = nn.relu(x)
        return MaxPool(2, 2, name="pool")(x)


class VGG16(nn.Module):
    """VGG-16: five convolution blocks, then three dense layers (see the module docstring).

    Attributes:
        num_classes: width of the last dense layer.
        fc_features: width of the two hidden dense layers; None for 4096, or 512 on
            small images.
    """

    num_classes: int = 1000
    fc_features: int | None = None

    @nn.compact
    def __call__(
        self, images: jax.Array, train: bool = False, mask: jax.Array | None = None
    ) -> jax.Array:
        """Return logits of shape ``(batch, num_classes)`` for NHWC float ``images``."""
        del train, mask  # No BatchNorm or dropout.
        small = is_small_image(images)
        x = images
        for index, features in enumerate(VGG16_BLOCKS):
            padding = first_conv_padding(*images.shape[1:3]) if index == 0 else ((1, 1), (1, 1))
            x = VGGBlock(features, padding, name=f"block{index + 1}")(x)
        x = x.reshape(x.shape[0], -1)
        width = self.fc_features or (SMALL_FC_FEATURES if small else FC_FEATURES)
        for index in (1, 2):
            x = nn.Dense(width, kernel_init=he_normal_fan_in, name=f"fc{index}")(x)
            x = nn.relu(x)
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.lecun_normal(), name="out")(x)
