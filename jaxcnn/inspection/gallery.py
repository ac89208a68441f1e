"""A gallery of mistakes: the misclassified test images in a grid, most confident first.

Each cell shows the image (3× enlarged), its true class, the predicted class and the
model's probability for that prediction. The grid has :data:`COLUMNS` columns and as
many rows as needed; its size in pixels is fixed by the number of images drawn:
``COLUMNS * CELL_WIDTH`` wide and ``HEADER_HEIGHT + rows * CELL_HEIGHT`` high. The PNG
also carries, as text named ``jaxcnn``, the count drawn and the test indices drawn.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

#: Images drawn at most unless told otherwise (the most confident mistakes).
DEFAULT_LIMIT = 100
COLUMNS = 10
SCALE = 3
CELL_WIDTH = 100
CELL_HEIGHT = 132
HEADER_HEIGHT = 24
_LINE_HEIGHT = 13
_FONT_SIZE = 11


@dataclasses.dataclass(frozen=True)
class Mistakes:
    """Misclassified examples, most confident first.

    Attributes:
        indices: positions in the split.
        labels: the true classes.
        predicted: the predicted classes.
        confidence: the model's probability of its (wrong) prediction.
        total: how many examples were misclassified in all (``indices`` may be fewer).
    """

    indices: np.ndarray
    labels: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray
    total: int


def find_mistakes(
    probabilities: np.ndarray, labels: np.ndarray, limit: int = DEFAULT_LIMIT
) -> Mistakes:
    """Return up to ``limit`` misclassified examples, the most confident first.

    Args:
        probabilities: (N, classes) the model's class probabilities.
        labels: (N,) the true classes.
        limit: how many to return at most.

    >>> probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.7, 0.3]])
    >>> found = find_mistakes(probabilities, np.array([0, 0, 0, 1]), limit=2)
    >>> found.indices.tolist(), found.predicted.tolist(), found.total
    ([2, 3], [1, 0], 3)
    """
    predicted = probabilities.argmax(axis=-1)
    confidence = probabilities.max(axis=-1)
    wrong = np.flatnonzero(predicted != labels)
    order = wrong[np.argsort(-confidence[wrong], kind="stable")][:limit]
    return Mistakes(
        indices=order,
        labels=labels[order],
        predicted=predicted[order],
        confidence=confidence[order],
        total=len(wrong),
    )


def grid_size(count: int) -> tuple[int, int]:
    """Return the (width, height) in pixels of a gallery of ``count`` images.

    >>> grid_size(25)
    (1000, 420)
    """
    rows = math.ceil(count / COLUMNS)
    return COLUMNS * CELL_WIDTH, HEADER_HEIGHT + rows * CELL_HEIGHT


def draw(
    images: np.ndarray, mistakes: Mistakes, class_names: Sequence[str], title: str
) -> Image.Image:
    """Return the gallery of ``mistakes`` (their ``images``: (N, H, W, 1) uint8, same order)."""
    font = ImageFont.load_default(size=_FONT_SIZE)
    canvas = Image.new("RGB", grid_size(len(mistakes.indices)), "white")
    pen = ImageDraw.Draw(canvas)
    pen.text((6, 5), title, fill="black", font=font)
    for number, image in enumerate(images):
        row, column = divmod(number, COLUMNS)
        left, top = column * CELL_WIDTH, HEADER_HEIGHT + row * CELL_HEIGHT
        size = image.shape[0] * SCALE
        picture = Image.fromarray(image[:, :, 0]).resize((size, size), Image.Resampling.NEAREST)
        canvas.paste(picture, (left + (CELL_WIDTH - size) // 2, top + 4))
        lines = (
            (f"true {class_names[mistakes.labels[number]]}", "darkgreen"),
            (f"pred {class_names[mistakes.predicted[number]]}", "firebrick"),
            (f"{100 * mistakes.confidence[number]:.1f}% sure", "black"),
        )
        for line_number, (text, colour) in enumerate(lines):
            y = top + 4 + size + 2 + line_number * _LINE_HEIGHT
            pen.text((left + 8, y), text, fill=colour, font=font)
    return canvas


def save(gallery: Image.Image, mistakes: Mistakes, path: Path) -> None:
    """Write ``gallery`` to ``path`` as a new PNG, with the drawn indices as text ``jaxcnn``."""
    info = PngInfo()
    drawn = {"drawn": len(mistakes.indices), "mistakes": mistakes.total}
    info.add_text("jaxcnn", json.dumps({**drawn, "indices": mistakes.indices.tolist()}))
    with path.open("xb") as stream:
        gallery.save(stream, format="PNG", pnginfo=info)
