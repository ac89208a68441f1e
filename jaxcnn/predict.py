"""``python -m jaxcnn.predict``: the predicted class and the class probabilities of images."""

from __future__ import annotations

import json
from collections.abc import Sequence

import jax
import numpy as np

from jaxcnn import data, images
from jaxcnn.cli import (
    ArgumentParser,
    checkpoint_command_parser,
    exit_process,
    prepare_jax,
    run_command,
)
from jaxcnn.training import workdir
from jaxcnn.training.state import TrainState
from jaxcnn.training.step import predict_logits

PROG = "python -m jaxcnn.predict"


def build_parser() -> ArgumentParser:
    """Return the command-line parser."""
    parser = checkpoint_command_parser(  # with the data flags, though predict reads no dataset
        PROG,
        "Classify PNG or JPEG images with a checkpoint of a jaxcnn run: prints "
        "the predicted class and the probability of each class. A grayscale 28x28 image is "
        "used as it is (white digit on black, as in MNIST). Any other image is converted "
        "the way MNIST's digits were prepared: made grayscale (transparency on white), "
        "inverted if it is a dark digit on a light background, cropped to the digit, "
        "resized to fit in 20x20 keeping its aspect ratio, and placed in a 28x28 black "
        f"field centred by its centre of mass. Files over {images.MAX_IMAGE_BYTES // 2**20} "
        "MB are refused before decoding.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="PNG or JPEG files")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    return parser


def class_probabilities(state: TrainState, pixels: np.ndarray) -> np.ndarray:
    """Return softmax probabilities (N, classes) for uint8 images (N, 28, 28)."""
    logits = predict_logits(state, pixels[..., None])
    return np.asarray(jax.nn.softmax(logits, axis=-1), np.float64)


def main(argv: Sequence[str] | None = None) -> int:
    """Classify the images; return the process exit code."""
    args = build_parser().parse_args(argv)
    prepare_jax()  # the XLA:CPU switches and the compilation cache
    config, state, _, step = workdir.restore_run(args.workdir, args.step)
    pixels = np.stack([images.read_image(path) for path in args.images])
    names = data.DATASETS[config.dataset].class_names
    probabilities = class_probabilities(state, pixels)
    results = [
        {
            "image": path,
            "predicted": names[int(row.argmax())],
            "probabilities": dict(zip(names, row.round(6).tolist(), strict=True)),
        }
        for path, row in zip(args.images, probabilities, strict=True)
    ]
    if args.json:
        print(json.dumps({"step": step, "results": results}, indent=2))
        return 0
    for result in results:
        best = result["probabilities"][result["predicted"]]
        spread = "  ".join(f"{name}:{p:.3f}" for name, p in result["probabilities"].items())
        print(f"{result['image']}: {result['predicted']} (p={best:.3f})  [{spread}]")
    return 0


cli_main = run_command(PROG, main)

if __name__ == "__main__":
    exit_process(cli_main())
