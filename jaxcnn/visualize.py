"""``python -m jaxcnn.visualize``: pictures of what a trained network computes.

Restores a checkpoint of a run and draws four new PNG files (never overwriting one):

- ``kernels_step<N>_<image>.png``: every kernel of the first convolution, one shared colour
  scale centred at 0 (red positive, blue negative);
- ``features_step<N>_<image>.png``: the input image, and under it the feature maps
  after each convolution block (the first two for VGG-16 and ResNet), a tile per channel;
- ``saliency_step<N>_<image>.png``: the gradient of the predicted class's logit and of
  the loss with respect to the input pixels, beside the image and laid over it;
- ``probabilities_step<N>_<image>.png``: the class probabilities as bars.

``<image>`` is ``test<I>`` for test image I, or ``image-<name>`` for a PNG of one's own,
read and converted as ``python -m jaxcnn.predict`` does. The arrays come from
:mod:`jaxcnn.features`.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt

from jaxcnn import data, images
from jaxcnn.cli import (
    ArgumentParser,
    add_data_flags,
    add_restore_flags,
    exit_process,
    load_data,
    prepare_jax,
    run_command,
)
from jaxcnn.config import TrainConfig
from jaxcnn.errors import UsageError
from jaxcnn.inspection import features
from jaxcnn.training import step as steps
from jaxcnn.training import workdir

PROG = "python -m jaxcnn.visualize"
#: Tiles per row: kernels, and feature-map channels.
KERNEL_COLUMNS, MAP_COLUMNS = 8, 16
#: Inches per tile.
TILE = 0.9


@dataclasses.dataclass(frozen=True)
class Subject:
    """The image the pictures are about.

    Attributes:
        pixels: uint8 (H, W, C), as the dataset holds it.
        label: its true class, or None for an image of one's own.
        name: the part of the file names that says which image (``test7``, ``image-two``).
        description: the same, for titles.
    """

    pixels: np.ndarray
    label: int | None
    name: str
    description: str


@dataclasses.dataclass(frozen=True)
class Inspection:
    """What :func:`inspect` found for one image (NumPy arrays, channels last)."""

    probabilities: np.ndarray
    predicted: int
    maps: dict[str, np.ndarray]
    logit_gradient: np.ndarray
    loss_gradient: np.ndarray
    loss_label: int


def inspect(state: steps.TrainState, subject: Subject) -> Inspection:
    """Return the probabilities, feature maps and saliency of ``subject``'s image.

    The loss's gradient is taken for the true class, or, for an image without one, for
    the predicted class.
    """
    image = steps.to_float_images(subject.pixels)
    logits, maps = features.feature_maps(state, image[None])
    probabilities = np.asarray(jax.nn.softmax(logits[0]), np.float64)
    predicted = int(probabilities.argmax())
    loss_label = predicted if subject.label is None else subject.label
    return Inspection(
        probabilities=probabilities,
        predicted=predicted,
        maps={name: np.asarray(value[0]) for name, value in maps.items()},
        logit_gradient=np.asarray(features.logit_saliency(state, image, predicted)),
        loss_gradient=np.asarray(features.loss_saliency(state, image, loss_label)),
        loss_label=loss_label,
    )


def draw_kernels(kernels: np.ndarray, title: str) -> plt.Figure:
    """Draw HWIO ``kernels`` as tiles on one colour scale, ±the largest weight."""
    tiles = features.kernel_tiles(kernels)
    inputs = kernels.shape[2]
    columns = min(KERNEL_COLUMNS, len(tiles))
    rows = -(-len(tiles) // columns)
    size = (TILE * columns + 1.2, TILE * rows + 0.9)
    figure, axes = plt.subplots(rows, columns, figsize=size, squeeze=False, layout="constrained")
    limit = float(np.abs(tiles).max()) or 1.0
    for index, axis in enumerate(axes.flat):
        axis.set_axis_off()
        if index < len(tiles):
            shown = axis.imshow(tiles[index], cmap="RdBu_r", vmin=-limit, vmax=limit)
            label = str(index) if inputs == 1 else f"{index // inputs}/in {index % inputs}"
            axis.set_title(label, fontsize=8)
    figure.colorbar(shown, ax=axes, shrink=0.8, label="weight")
    figure.suptitle(title, fontsize=9)
    return figure


def draw_feature_maps(
    pixels: np.ndarray, maps: dict[str, np.ndarray], title: str, caption: str
) -> plt.Figure:
    """Draw the input image and, under it, each block's maps (H, W, C), a tile per channel.

    A block's tiles share one colour scale, from 0 (black) to the block's largest
    value, so a channel that hardly responds to this image stays dark.
    """
    layout = {name: _grid_shape(value.shape[-1]) for name, value in maps.items()}
    width = max(columns for _, columns in layout.values())
    heights = [2.2] + [TILE * rows + 0.5 for rows, _ in layout.values()]
    figure = plt.figure(figsize=(TILE * width + 1.4, sum(heights)), layout="constrained")
    panels = figure.subfigures(len(heights), 1, height_ratios=heights)
    axis = panels[0].subplots()
    axis.imshow(pixels[..., 0], cmap="gray", vmin=0, vmax=255)
    axis.set_axis_off()
    axis.set_title(caption, fontsize=9)
    for panel, (name, value) in zip(panels[1:], maps.items(), strict=True):
        rows, columns = layout[name]
        axes = panel.subplots(rows, columns, squeeze=False)
        low, high = min(0.0, float(value.min())), float(value.max()) or 1.0
        for channel, tile_axis in enumerate(axes.flat):
            tile_axis.set_axis_off()
            if channel < value.shape[-1]:
                shown = tile_axis.imshow(value[..., channel], cmap="inferno", vmin=low, vmax=high)
                tile_axis.set_title(str(channel), fontsize=7, pad=2)
        panel.colorbar(shown, ax=axes, shrink=0.9)
        height, width_, channels = value.shape
        panel.suptitle(f"after block {name}: {height}×{width_}×{channels}", fontsize=9)
    figure.suptitle(title, fontsize=10)
    return figure


def _grid_shape(count: int) -> tuple[int, int]:
    """Return (rows, columns) for ``count`` tiles, at most :data:`MAP_COLUMNS` per row."""
    columns = min(count, MAP_COLUMNS)
    return -(-count // columns), columns


#: The grey level (0-255) whose contour outlines the strokes over a saliency map.
OUTLINE_LEVEL = 128


def draw_saliency(
    pixels: np.ndarray, found: Inspection, names: Sequence[str], title: str
) -> plt.Figure:
    """Draw the image, each input gradient (red > 0, blue < 0), and its size with the strokes."""
    gray = pixels[..., 0]
    gradients = [
        (f"d logit[{names[found.predicted]}] / d pixel", found.logit_gradient[..., 0]),
        (f"d loss(label {names[found.loss_label]}) / d pixel", found.loss_gradient[..., 0]),
    ]
    figure, axes = plt.subplots(1, 5, figsize=(14, 3.4), layout="constrained")
    axes[0].imshow(gray, cmap="gray", vmin=0, vmax=255)
    axes[0].set_title("input", fontsize=9)
    for (label, gradient), value_axis, overlay_axis in zip(
        gradients, axes[1::2], axes[2::2], strict=True
    ):
        limit = float(np.abs(gradient).max()) or 1.0
        shown = value_axis.imshow(gradient, cmap="RdBu_r", vmin=-limit, vmax=limit)
        figure.colorbar(shown, ax=value_axis, shrink=0.8)
        value_axis.set_title(label, fontsize=9)
        overlay_axis.imshow(np.abs(gradient), cmap="inferno", vmin=0, vmax=limit)
        overlay_axis.contour(gray, levels=[OUTLINE_LEVEL], colors="cyan", linewidths=0.8)
        overlay_axis.set_title("|gradient|, strokes outlined", fontsize=9)
    for axis in axes:
        axis.set_axis_off()
    figure.suptitle(title, fontsize=10)
    return figure


def draw_probabilities(
    probabilities: np.ndarray, names: Sequence[str], predicted: int, label: int | None
) -> plt.Figure:
    """Draw the class probabilities as bars: the predicted class's orange, the true one's edged."""
    figure, axis = plt.subplots(figsize=(7, 3.6), layout="constrained")
    colours = ["tab:orange" if index == predicted else "tab:blue" for index in range(len(names))]
    edges = ["black" if index == label else "none" for index in range(len(names))]
    bars = axis.bar(range(len(names)), probabilities, color=colours, edgecolor=edges, linewidth=2)
    axis.bar_label(bars, [f"{p:.3g}" for p in probabilities], fontsize=7)
    axis.set_xticks(range(len(names)), names, rotation=30 if len(max(names, key=len)) > 2 else 0)
    truth = "" if label is None else f", true class {names[label]} (edged in black)"
    title = f"predicted {names[predicted]} (p={probabilities[predicted]:.3f}){truth}"
    axis.set(ylim=(0, 1.1), ylabel="probability (softmax of the logits)", title=title)
    return figure


def file_stem(path: str) -> str:
    """Return the name of image file ``path`` as it goes into output file names.

    >>> file_stem("/tmp/my digit (2).png")
    'image-my_digit__2_'
    """
    return "image-" + re.sub(r"[^A-Za-z0-9_-]", "_", Path(path).stem)[:40]


def target_paths(out: Path, step: int, name: str) -> dict[str, Path]:
    """Return the four files to write, by picture, all named by the step and the image.

    The kernels do not depend on the image, but named by it too they let one folder
    hold the pictures of several images of a run without one file standing for two.
    """
    kinds = ("kernels", "features", "saliency", "probabilities")
    return {kind: out / f"{kind}_step{step}_{name}.png" for kind in kinds}


def check_targets(targets: dict[str, Path]) -> None:
    """Raise :class:`UsageError` if one of ``targets`` exists: nothing is overwritten."""
    for path in targets.values():
        if path.exists():
            raise UsageError(
                f"{str(path)!r} exists; visualize never overwrites: move it, or choose "
                "another --out folder"
            )


def save(figure: plt.Figure, path: Path) -> None:
    """Write ``figure`` to the new file ``path`` as PNG (refused if it exists) and close it."""
    with path.open("xb") as stream:
        figure.savefig(stream, format="png", dpi=100)
    plt.close(figure)


def choose_subject(
    args: argparse.Namespace, config: TrainConfig, pixels: np.ndarray | None
) -> Subject:
    """Return the image of ``--image`` (already read as ``pixels``) or of ``--test-index``.

    Raises:
        UsageError: the test index is outside the test set.
    """
    if pixels is not None:
        return Subject(pixels[..., None], None, file_stem(args.image), repr(args.image))
    index = 0 if args.test_index is None else args.test_index
    test = load_data(args, config.dataset, ("test",))["test"]
    if not 0 <= index < len(test):
        raise UsageError(
            f"--test-index {index}: the {config.dataset} test set has {len(test)} images, "
            f"0 to {len(test) - 1}"
        )
    return Subject(
        test.images[index], int(test.labels[index]), f"test{index}", f"test image {index}"
    )


def build_parser() -> ArgumentParser:
    """Return the command-line parser."""
    parser = ArgumentParser(
        prog=PROG,
        description="Draw what a checkpoint of a jaxcnn run has learned, as four new PNG "
        "files: the first layer's kernels (kernels_step<N>_<image>.png), one image's feature maps "
        "after each convolution block (features_...), its saliency, the gradient of the "
        "predicted class's logit and of the loss with respect to the input pixels "
        "(saliency_...), and its class probabilities (probabilities_...). The image is test "
        "image 0 unless --test-index or --image says otherwise. An existing file is never "
        "overwritten: the command then stops before writing anything.",
    )
    add_restore_flags(parser)
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--test-index",
        type=int,
        metavar="I",
        help="draw test image I of the run's dataset (default: 0)",
    )
    source.add_argument(
        "--image",
        metavar="PNG",
        help="draw this PNG or JPEG instead, converted to a 28x28 MNIST-style digit as "
        "python -m jaxcnn.predict does; the loss is then taken for the predicted class",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="existing folder to write the PNG files into (default: the work dir)",
    )
    add_data_flags(parser)  # for --test-index
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Draw the pictures; return the process exit code."""
    args = build_parser().parse_args(argv)
    prepare_jax()  # the XLA:CPU switches and the compilation cache
    if args.out is not None and not Path(args.out).is_dir():
        raise UsageError(f"--out {args.out!r} is not an existing folder")
    if args.test_index is not None and args.test_index < 0:
        raise UsageError(f"--test-index {args.test_index}: must be 0 or more")
    pixels = images.read_image(args.image) if args.image else None
    config, state, _, step = workdir.restore_run(args.workdir, args.step)
    subject = choose_subject(args, config, pixels)
    targets = target_paths(Path(args.out or args.workdir), step, subject.name)
    check_targets(targets)
    names = data.DATASETS[config.dataset].class_names
    image_shape = data.DATASETS[config.dataset].image_shape
    path = features.first_conv_path(state, image_shape)
    kernels = np.asarray(features.layer_kernel(state.params, path))
    found = inspect(state, subject)
    run = f"{config.model} on {config.dataset}, step {step} of {args.workdir}"
    height, width, inputs, outputs = kernels.shape
    pictures = {
        "kernels": draw_kernels(
            kernels,
            f"first-layer kernels ({'/'.join(path)}): {outputs} of {height}×{width}×{inputs}, "
            f"one colour scale, red > 0, blue < 0\n{run}",
        ),
        "features": draw_feature_maps(
            subject.pixels,
            found.maps,
            f"feature maps of {subject.description}\n{run}",
            f"input: {subject.description}, predicted {names[found.predicted]}",
        ),
        "saliency": draw_saliency(
            subject.pixels, found, names, f"saliency of {subject.description}: {run}"
        ),
        "probabilities": draw_probabilities(
            found.probabilities, names, found.predicted, subject.label
        ),
    }
    for kind, figure in pictures.items():
        save(figure, targets[kind])
        print(f"wrote {targets[kind]}")
    return 0


cli_main = run_command(PROG, main)

if __name__ == "__main__":
    exit_process(cli_main())
