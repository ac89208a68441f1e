"""Reading an image file and turning it into an MNIST-style 28×28 digit.

MNIST's digits were prepared so: each was size-normalised to fit in a 20×20 box keeping
its aspect ratio (anti-aliased, hence grey levels), then placed in a 28×28 field so that
its centre of mass sits at the centre. Digits are white (255) on black (0).
:func:`to_mnist_style` does the same to any image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from jaxcnn.errors import UsageError

#: Files larger than this are refused before decoding.
MAX_IMAGE_BYTES = 50 * 1024 * 1024
MNIST_SIZE = 28
DIGIT_BOX = 20


def read_image(path: str | Path) -> np.ndarray:
    """Return the image at ``path`` as a 28×28 uint8 array, white digit on black.

    A grayscale 28×28 image is used as it is; anything else goes through
    :func:`to_mnist_style`.

    Raises:
        UsageError: the file is missing, empty, over :data:`MAX_IMAGE_BYTES`, or not an
            image Pillow can decode.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"image {str(path)!r} does not exist or is not a file")
    size = path.stat().st_size
    if size == 0:
        raise UsageError(f"image {str(path)!r} is empty")
    if size > MAX_IMAGE_BYTES:
        raise UsageError(
            f"image {str(path)!r} is {size / 2**20:.0f} MB, over the "
            f"{MAX_IMAGE_BYTES // 2**20} MB limit; refused without decoding"
        )
    try:
        with Image.open(path) as image:
            image.load()
            return _to_array(image)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as error:
        raise UsageError(f"image {str(path)!r} cannot be read as an image: {error}") from error


def _to_array(image: Image.Image) -> np.ndarray:
    """Return ``image`` as the 28×28 uint8 array the model takes."""
    if image.mode == "L" and image.size == (MNIST_SIZE, MNIST_SIZE):
        return np.asarray(image, np.uint8)
    return to_mnist_style(_grayscale_on_white(image))


def _grayscale_on_white(image: Image.Image) -> np.ndarray:
    """Return ``image`` as float grayscale in [0, 255], transparency composited on white."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("L"), np.float32)


def to_mnist_style(gray: np.ndarray) -> np.ndarray:
    """Convert a grayscale image (H, W) in [0, 255] into an MNIST-style 28×28 uint8 digit.

    1. Polarity: if the border is brighter than the image on average (a dark digit on
       light paper), invert, so the digit is white on black; then subtract the
       background (the border's median).
    2. Crop to the digit's bounding box (pixels above a fifth of the brightest).
    3. Resize to fit in 20×20 keeping the aspect ratio, with anti-aliasing.
    4. Paste into a black 28×28 field so the centre of mass is at the centre.

    An image with no digit (all one level) gives an all-black field.
    """
    gray = np.asarray(gray, np.float32)
    if _border(gray).mean() > gray.mean():
        gray = 255.0 - gray
    gray = np.clip(gray - np.median(_border(gray)), 0, 255)  # background to 0
    field = np.zeros((MNIST_SIZE, MNIST_SIZE), np.uint8)
    if gray.max() <= 0:
        return field
    rows, cols = np.nonzero(gray > gray.max() / 5)
    digit = gray[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    digit = digit * (255.0 / digit.max())
    height, width = digit.shape
    scale = DIGIT_BOX / max(height, width)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = Image.fromarray(digit.astype(np.float32), mode="F").resize(
        new_size, Image.Resampling.LANCZOS
    )
    digit = np.clip(np.asarray(resized), 0, 255)
    return _paste_centred_by_mass(digit, field)


def _border(gray: np.ndarray) -> np.ndarray:
    """Return the pixels on the edge of ``gray``."""
    return np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])


def _paste_centred_by_mass(digit: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Paste ``digit`` into ``field`` so that its centre of mass is at the field's centre."""
    height, width = digit.shape
    total = digit.sum()
    centre_y = (digit.sum(axis=1) @ np.arange(height)) / total
    centre_x = (digit.sum(axis=0) @ np.arange(width)) / total
    middle = (MNIST_SIZE - 1) / 2
    top = int(np.clip(round(middle - centre_y), 0, MNIST_SIZE - height))
    left = int(np.clip(round(middle - centre_x), 0, MNIST_SIZE - width))
    field = field.copy()
    field[top : top + height, left : left + width] = np.round(digit).astype(np.uint8)
    return field
