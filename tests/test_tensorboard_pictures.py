"""TensorBoard's kernel image and histograms (jaxcnn.tb), read back by TensorBoard itself."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from helpers.common import read_pictures, run_cli, run_metrics, run_summary
from matplotlib import colormaps
from PIL import Image

from jaxcnn import tb, train
from jaxcnn.training import workdir
from jaxcnn.trees import layer_of

#: Log points at steps 1, 11, 21; checkpoints at 11 (with the log of step 11), 22 and 30.
RUN_FLAGS = ["--max-steps", "30", "--log-every", "10", "--checkpoint-every", "11", "--log-grads"]
LEAVES = [f"{layer}/{kind}" for layer in ("conv1/conv", "conv2/conv", "out")
          for kind in ("bias", "kernel")]  # fmt: skip


def decode(event) -> np.ndarray:
    with Image.open(io.BytesIO(event.encoded_image_string)) as picture:
        return np.asarray(picture.convert("RGB"))


def expected_cell_colours(kernels: np.ndarray) -> np.ndarray:
    """Return the RGB the image should have at each weight: RdBu_r, ±the largest, centred 0."""
    limit = np.abs(kernels).max()
    return np.round(255 * colormaps["RdBu_r"](0.5 + 0.5 * kernels / limit)[..., :3])


def cell_centres(image: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """Return the image's pixel at the centre of each weight's cell, shaped (5, 5, 1, 16, 3)."""
    size, gap, per_row = tb.PIXELS_PER_WEIGHT, tb.KERNEL_GAP, tb.KERNELS_PER_ROW
    height, width, _, count = kernels.shape
    tile_h, tile_w = height * size + gap, width * size + gap
    out = np.zeros((*kernels.shape, 3))
    for kernel in range(count):
        top, left = (kernel // per_row) * tile_h, (kernel % per_row) * tile_w
        for row in range(height):
            for col in range(width):
                out[row, col, 0, kernel] = image[
                    top + row * size + size // 2, left + col * size + size // 2
                ]
    return out


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("pictures") / "run"
    argv = [*RUN_FLAGS, "--data-dir", str(data_dir), "--workdir", str(path)]
    assert run_cli(train.cli_main, argv) == 0
    return path, argv


def test_kernel_image_and_histograms_at_every_log_step_hold_the_steps_values(run):
    path, _ = run
    images, histograms = read_pictures(path / "tb")
    assert list(images) == [tb.KERNELS_TAG]
    assert sorted(histograms) == sorted(
        f"{group}/{leaf}" for group in ("weights", "gradients") for leaf in LEAVES
    )
    for events in [*images.values(), *histograms.values()]:
        assert [event.step for event in events] == [1, 11, 21]
    # step 11 was checkpointed right after its log point: the image shows its kernels
    _, state, _, _ = workdir.restore_run(path, 11)
    kernels = np.asarray(state.params["conv1"]["conv"]["kernel"])
    image = decode(images[tb.KERNELS_TAG][1])
    assert image.shape == (2 * 40 + 2, 8 * 40 + 7 * 2, 3)  # 16 kernels of 5×5, 8 a row
    assert np.abs(cell_centres(image, kernels) - expected_cell_colours(kernels)).max() <= 1
    assert not np.array_equal(image, decode(images[tb.KERNELS_TAG][0]))  # training moved them
    # and the weight histograms are those of its parameters
    for leaf in LEAVES:
        values = state.params
        for name in leaf.split("/"):
            values = values[name]
        values = np.asarray(values, np.float64).ravel()
        stats = histograms[f"weights/{leaf}"][1].histogram_value
        assert stats.num == values.size
        assert (stats.min, stats.max) == pytest.approx((values.min(), values.max()), rel=1e-6)
        assert stats.sum == pytest.approx(values.sum(), rel=1e-4, abs=1e-5)
        assert stats.sum_squares == pytest.approx(np.square(values).sum(), rel=1e-5)
        counts, edges = np.histogram(values, bins=30, range=(values.min(), values.max()))
        assert stats.bucket_limit == pytest.approx(edges[1:].tolist(), rel=1e-5, abs=1e-7)
        assert np.abs(np.array(stats.bucket) - counts).sum() <= 2  # edges in float32
    # the gradient histograms hold the gradient the step measured: per layer, the sum of
    # squares over its leaves is the square of the gradient norm in metrics.jsonl
    records = run_metrics(path)
    for index, record in enumerate(records):
        for layer, norm in record["grad_norm"].items():
            total = sum(
                histograms[f"gradients/{leaf}"][index].histogram_value.sum_squares
                for leaf in LEAVES
                if layer_of(leaf) == layer
            )
            assert total == pytest.approx(norm**2, rel=1e-4)


def test_the_histograms_leave_the_training_bitwise_unchanged(run, data_dir, tmp_path):
    """The step that measures them trains as the plain step does (jaxcnn.steps)."""
    path, _ = run
    plain = tmp_path / "plain"
    flags = [flag for flag in RUN_FLAGS if flag != "--log-grads"]
    assert (
        run_cli(train.cli_main, [*flags, "--data-dir", str(data_dir), "--workdir", str(plain)]) == 0
    )
    sha = [run_summary(folder)["params_sha256"] for folder in (path, plain)]
    assert sha[0] == sha[1]
    _, histograms = read_pictures(plain / "tb")
    assert histograms == {}  # histograms come with --log-grads only


def test_a_resumed_run_shows_each_picture_once_with_the_same_values(run, capsys):
    path, argv = run
    before_images, before_histograms = read_pictures(path / "tb")
    # as if killed after the log of step 21 and before the checkpoint of step 22
    for step in ("22", "30"):
        shutil.rmtree(path / "checkpoints" / step)
    assert run_cli(train.cli_main, argv) == 0
    assert "resuming from the checkpoint at step 11" in capsys.readouterr().out
    after_images, after_histograms = read_pictures(path / "tb")
    assert sorted(after_histograms) == sorted(before_histograms)
    for tag, events in after_images.items():
        assert [event.step for event in events] == [1, 11, 21], tag
        assert [event.encoded_image_string for event in events] == [
            event.encoded_image_string for event in before_images[tag]
        ]
    for tag, events in after_histograms.items():
        assert [event.step for event in events] == [1, 11, 21], tag
        assert [event.histogram_value for event in events] == [
            event.histogram_value for event in before_histograms[tag]
        ], tag
    assert [tb.first_step_of(file) for file in sorted((path / "tb").iterdir())] == [1, 21]
