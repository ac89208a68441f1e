"""Feature maps, kernels and saliency (jaxcnn.features) and the visualize command.

The arrays are checked against independent computations on real MNIST test digits:
the sub-layers applied by hand, ``lax.conv_general_dilated``, and central finite
differences in float64.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers.common import file_digests, run_cli, save_pngs
from jax import lax
from PIL import Image

from jaxcnn import models, visualize
from jaxcnn.inspection import features
from jaxcnn.models.cnn import ConvReluPool
from jaxcnn.training import state as states
from jaxcnn.training import step as steps
from jaxcnn.training import workdir

IMAGE_SHAPE = (28, 28, 1)
KINDS = ("kernels", "features", "saliency", "probabilities")


@pytest.fixture(scope="module")
def state(trained) -> states.TrainState:
    """The ``trained`` run's state at step 300 (about 96% on the test set)."""
    return workdir.restore_run(trained)[1]


def float_images(split, count: int) -> jax.Array:
    return steps.to_float_images(jnp.asarray(split.images[:count]))


def test_feature_maps_are_the_models_own_sub_layers_applied_by_hand(state, mnist):
    images = float_images(mnist["test"], 8)
    logits, maps = features.feature_maps(state, images, blocks=None)
    assert {name: value.shape for name, value in maps.items()} == {
        "conv1": (8, 14, 14, 16),
        "conv2": (8, 7, 7, 32),
    }
    params = state.params
    conv1 = ConvReluPool(16).apply({"params": params["conv1"]}, images)
    conv2 = ConvReluPool(32).apply({"params": params["conv2"]}, conv1)
    np.testing.assert_array_equal(maps["conv1"], conv1)
    np.testing.assert_array_equal(maps["conv2"], conv2)
    by_hand = conv2.reshape(8, -1) @ params["out"]["kernel"] + params["out"]["bias"]
    np.testing.assert_allclose(logits, by_hand, rtol=1e-5, atol=1e-5)
    predicted = steps.predict_logits(state, mnist["test"].images[:8])
    np.testing.assert_allclose(logits, predicted, rtol=1e-5, atol=1e-5)


def test_first_block_equals_an_independent_convolution_relu_and_pool(state, mnist):
    images = float_images(mnist["test"], 16)
    path = features.first_conv_path(state, IMAGE_SHAPE)
    assert path == ("conv1", "conv")
    kernel = features.layer_kernel(state.params, path)
    assert kernel.shape == (5, 5, 1, 16)
    bias = state.params["conv1"]["conv"]["bias"]
    conv = lax.conv_general_dilated(
        images, kernel, (1, 1), ((2, 2), (2, 2)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    relu = np.maximum(np.asarray(conv + bias), 0.0)
    pooled = relu.reshape(16, 14, 2, 14, 2, 16).max(axis=(2, 4))
    _, maps = features.feature_maps(state, images, blocks=1)
    assert list(maps) == ["conv1"]
    np.testing.assert_allclose(maps["conv1"], pooled, rtol=1e-5, atol=1e-5)
    assert 0.1 < (pooled > 0).mean() < 0.9  # the check is not on a map of zeros


def float64_state(state: states.TrainState) -> states.TrainState:
    return state.replace(
        params=jax.tree.map(lambda leaf: jnp.asarray(leaf, jnp.float64), state.params)
    )


def one_sided_differences(function, image, row: int, col: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the forward and backward difference quotients of ``function`` at one pixel."""
    shift = jnp.zeros_like(image).at[row, col, 0].set(STEP)
    at = function(image)
    return (
        np.asarray((function(image + shift) - at) / STEP),
        np.asarray((at - function(image - shift)) / STEP),
    )


#: The finite-difference step, in pixel intensity (1 = black to white).
STEP = 1e-6


@pytest.mark.parametrize("index", [0, 1, 2])
def test_saliency_equals_central_finite_differences_in_float64(state, mnist, index):
    """The logits are piecewise linear in the pixels (ReLU, max-pool). Where all ten are
    linear within ±STEP of the image (forward and backward differences agree), both
    saliencies equal central differences.

    On a raw MNIST digit most pixels sit on a kink, where there is no derivative to
    compare with: the black background makes exact ties in the 2×2 max-pools, which a
    changed pixel breaks (autodiff then gives the mean of the tied branches, jnp.max's
    rule). So the digit is dithered by less than one grey level, which breaks the ties.
    """
    test = mnist["test"]
    label = int(test.labels[index])
    with jax.enable_x64(True):
        state64 = float64_state(state)
        dither = np.random.default_rng(index).uniform(0, 1, IMAGE_SHAPE)
        image = (jnp.asarray(test.images[index], jnp.float64) + dither) / 255.0
        predicted = int(jnp.argmax(features.logits_of(state64, image[None])[0]))
        logit_gradient = features.logit_saliency(state64, image, predicted)
        loss_gradient = features.loss_saliency(state64, image, label)
        assert logit_gradient.dtype == loss_gradient.dtype == jnp.float64
        assert logit_gradient.shape == loss_gradient.shape == IMAGE_SHAPE

        def all_logits(pixels):
            return features.logits_of(state64, pixels[None])[0]

        def loss(pixels):
            logits = features.logits_of(state64, pixels[None])
            return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.array([label]))[0]

        size = np.abs(np.asarray(logit_gradient[..., 0]))
        largest = np.argsort(size, axis=None)[-4:]
        others = np.random.default_rng(index).choice(np.flatnonzero(size), 4, replace=False)
        linear = 0
        for flat in [*largest, *others]:
            row, col = divmod(int(flat), 28)
            forward, backward = one_sided_differences(all_logits, image, row, col)
            value = float(logit_gradient[row, col, 0])
            if np.allclose(forward, backward, rtol=1e-6, atol=1e-8):
                linear += 1
                assert value == pytest.approx(forward[predicted], rel=1e-6, abs=1e-8)
                loss_forward, loss_backward = one_sided_differences(loss, image, row, col)
                central = (loss_forward + loss_backward) / 2
                # abs: the loss's rounding (about 1e-15 of the logits) over STEP
                assert float(loss_gradient[row, col, 0]) == pytest.approx(
                    central, rel=1e-6, abs=2e-9
                )
        assert linear >= 6  # of the 8 pixels, most away from a kink
        assert size.max() > 0.01  # the pixels checked carry a real gradient


@pytest.mark.parametrize(
    ("name", "first_conv", "blocks"),
    [
        pytest.param(
            "vgg16",
            ("block1", "conv1"),
            {"block1": (1, 16, 16, 64), "block2": (1, 8, 8, 128)},
            marks=pytest.mark.slow,
        ),
        (
            "resnet18",
            ("stem_conv",),
            {"stage1_block1": (1, 28, 28, 64), "stage1_block2": (1, 28, 28, 64)},
        ),
    ],
)
def test_vgg_and_resnet_give_their_first_blocks_and_saliency(
    name, first_conv, blocks, mnist, tmp_path
):
    model = models.create_model(name, 10)
    fresh = states.create_train_state(model, optax.sgd(0.1), jax.random.key(0), IMAGE_SHAPE)
    assert features.first_conv_path(fresh, IMAGE_SHAPE) == first_conv
    assert features.layer_kernel(fresh.params, first_conv).shape == (3, 3, 1, 64)
    test = mnist["test"]
    subject = visualize.Subject(test.images[5], int(test.labels[5]), "test5", "test image 5")
    found = visualize.inspect(fresh, subject)
    assert {key: (1, *value.shape) for key, value in found.maps.items()} == blocks
    logits, maps = features.feature_maps(fresh, float_images(test, 6)[5:])
    for key, value in maps.items():  # one image, then a batch: XLA may sum in another order
        np.testing.assert_allclose(found.maps[key], value[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(found.probabilities, jax.nn.softmax(logits[0]), rtol=1e-6)
    assert found.logit_gradient.shape == found.loss_gradient.shape == IMAGE_SHAPE
    assert np.abs(found.logit_gradient).max() > 0
    figure = visualize.draw_feature_maps(subject.pixels, found.maps, name, "input")
    visualize.save(figure, tmp_path / "maps.png")
    with Image.open(tmp_path / "maps.png") as picture:
        assert picture.width > 1000  # 16 tiles per row


def test_visualize_writes_the_four_pictures_of_a_png_and_of_a_test_image(
    trained, mnist, tmp_path, capsys
):
    (png,) = save_pngs(mnist["test"].images[7:8], tmp_path, "digit")
    out = tmp_path / "out"
    out.mkdir()
    before = file_digests(trained)
    assert run_cli(visualize.cli_main, ["--workdir", str(trained), "--image", png,
                                        "--out", str(out)]) == 0  # fmt: skip
    argv = ["--workdir", str(trained), "--step", "200", "--test-index", "7", "--out", str(out)]
    assert run_cli(visualize.cli_main, argv) == 0
    out_lines = capsys.readouterr().out.splitlines()
    written = [line.split()[-1] for line in out_lines if line.startswith("wrote ")]
    names = sorted(path.name for path in out.iterdir())
    assert names == sorted(
        [f"{kind}_step300_image-digit0.png" for kind in KINDS]
        + [f"{kind}_step200_test7.png" for kind in KINDS]
    )
    assert sorted(path.split("/")[-1] for path in written) == names
    for path in out.iterdir():
        with Image.open(path) as picture:
            assert picture.format == "PNG" and picture.width >= 600
    assert file_digests(trained) == before  # nothing written into the work dir


def bad_input_cases(trained, tmp_path) -> dict[str, tuple[list[str], str]]:
    """argv and the words its one-line error must hold, by case."""
    text = tmp_path / "text.png"
    text.write_text("not an image")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "saliency_step300_test0.png").write_bytes(b"mine")
    work = ["--workdir", str(trained)]
    return {
        "missing workdir": (["--workdir", str(tmp_path / "none")], "is not an existing folder"),
        "step without checkpoint": ([*work, "--step", "7"], "no checkpoint at step 7"),
        "index past the test set": ([*work, "--test-index", "10000"], "0 to 9999"),
        "negative index": ([*work, "--test-index", "-1"], "must be 0 or more"),
        "not an image": ([*work, "--image", str(text)], "cannot be read as an image"),
        "missing image": ([*work, "--image", str(tmp_path / "no.png")], "does not exist"),
        "index and image": ([*work, "--test-index", "1", "--image", str(text)], "not allowed"),
        "missing out": ([*work, "--out", str(tmp_path / "nowhere")], "--out"),
        "existing target": ([*work, "--out", str(tmp_path / "taken")], "never overwrites"),
        "bad flag": ([*work, "--colour"], "unrecognized arguments"),
    }


CASES = [
    "missing workdir",
    "step without checkpoint",
    "index past the test set",
    "negative index",
    "not an image",
    "missing image",
    "index and image",
    "missing out",
    "existing target",
    "bad flag",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gets_one_line_exit_2_and_nothing_written(
    case, trained, data_dir, tmp_path, capsys
):
    argv, words = bad_input_cases(trained, tmp_path)[case]
    before, before_here = file_digests(trained), file_digests(tmp_path)
    code = run_cli(visualize.cli_main, [*argv, "--data-dir", str(data_dir)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m jaxcnn.visualize: error:"), lines
    assert words in lines[0]
    assert file_digests(trained) == before
    assert file_digests(tmp_path) == before_here
