"""VGG-16 and ResNet-18/34: exact sizes, the summary's arithmetic, training, BatchNorm state."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers.common import run_cli

from jaxcnn import data, models, summary, train
from jaxcnn.config import TrainConfig
from jaxcnn.inspection import layer_shapes
from jaxcnn.training import job, parallel, workdir
from jaxcnn.training import step as steps
from jaxcnn.training.evaluation import evaluate
from jaxcnn.training.signals import StopRequest
from jaxcnn.training.state import TrainState, create_train_state
from jaxcnn.training.state import new_state as new_config_state

#: torchvision's counts for 224×224×3 images and 1000 classes.
IMAGENET_PARAMS = {"vgg16": 138_357_544, "resnet18": 11_689_512, "resnet34": 21_797_672}
BATCH = 16
#: Learning rate of the few-step training tests. VGG-16 has no BatchNorm; with Adam at
#: 1e-3 its loss stays at ln 10 (measured: 25 steps, batch 32), at 1e-4 it learns.
LEARNING_RATES = {"cnn": 1e-3, "vgg16": 1e-4, "resnet18": 1e-3}
#: One jitted step per test module, so each model compiles once for the tests that share it.
TRAIN_STEP = jax.jit(steps.train_step)


def parameter_count(name: str, shape: tuple[int, int, int], num_classes: int) -> int:
    model = models.create_model(name, num_classes)
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape)), train=False)
    )
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("name", sorted(IMAGENET_PARAMS))
def test_imagenet_parameter_counts_are_exact(name):
    assert parameter_count(name, (224, 224, 3), 1000) == IMAGENET_PARAMS[name]


def test_the_seeds_worked_examples():
    """Section 2.2.4: 32x32x3, 10 filters of 5x5, stride 1, pad 2; section 2.2.2's stack."""
    shape = layer_shapes.conv_output_shape((32, 32, 3), filters=10, kernel=5, stride=1, padding=2)
    assert shape == (32, 32, 10)
    assert (
        layer_shapes.size_formula(32, kernel=5, stride=1, padding=2) == "(32 + 2*2 - 5)/1 + 1 = 32"
    )
    assert layer_shapes.conv_parameters(in_channels=3, filters=10, kernel=5) == 760
    first = layer_shapes.conv_output_shape((32, 32, 3), filters=6, kernel=5)
    second = layer_shapes.conv_output_shape(first, filters=10, kernel=5)
    assert (first, second) == ((28, 28, 6), (24, 24, 10))
    assert layer_shapes.conv_parameters(3, 6, 5) == 6 * 5 * 5 * 3 + 6
    assert layer_shapes.conv_parameters(6, 10, 5) == 10 * 5 * 5 * 6 + 10


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("cnn", (28, 28, 1)),
        *((name, shape) for name in IMAGENET_PARAMS for shape in [(28, 28, 1), (224, 224, 3)]),
    ],
)
def test_every_summary_row_follows_from_the_formula(name, shape):
    """Each layer's shape from the formula is the one Flax computed; rows add up to the total."""
    table = layer_shapes.summarize(name, shape, 10)
    assert table.layers
    for row in table.layers:
        assert row.formula_shape == row.output_shape, row
    assert sum(row.params for row in table.layers) == table.total_params
    assert table.total_params == parameter_count(name, shape, 10)


def test_summary_of_the_seeds_cnn(capsys):
    assert run_cli(summary.cli_main, ["--model", "cnn"]) == 0
    rows = [" ".join(line.split()) for line in capsys.readouterr().out.splitlines()]
    assert rows[2:] == [
        "input 28x28x1",
        "conv1/conv conv 5x5 /1 p2 28x28x16 (28 + 2*2 - 5)/1 + 1 = 28 5*5*1*16 + 16 = 416",
        "conv1/pool max-pool 2x2 /2 p0 14x14x16 (28 + 2*0 - 2)/2 + 1 = 14 -",
        "conv2/conv conv 5x5 /1 p2 14x14x32 (14 + 2*2 - 5)/1 + 1 = 14 5*5*16*32 + 32 = 12,832",
        "conv2/pool max-pool 2x2 /2 p0 7x7x32 (14 + 2*0 - 2)/2 + 1 = 7 -",
        "out dense 10 1568 features -> 10 1568*10 + 10 = 15,690",
        "total: 28,938 parameters",
    ]


def test_summary_of_vgg16_at_224_allocates_nothing(capsys):
    argv = ["--model", "vgg16", "--input-shape", "224,224,3", "--num-classes", "1000"]
    assert run_cli(summary.cli_main, argv) == 0
    out = capsys.readouterr().out
    assert "25088*4096 + 4096 = 102,764,544" in out
    assert out.rstrip().endswith("total: 138,357,544 parameters")


def test_summary_counts_batchnorm_statistics_apart(capsys):
    assert run_cli(summary.cli_main, ["--model", "resnet18"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert " ".join(lines[3].split()) == (
        "stem_conv conv 3x3 /1 p1 28x28x64 (28 + 2*1 - 3)/1 + 1 = 28 3*3*1*64 = 576"
    )
    assert lines[-1] == (
        "total: 11,172,810 parameters (and 9,600 BatchNorm running statistics, "
        "which are not trained)"
    )


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--model", "vgg19"], "--model"),
        (["--input-shape", "28,28"], "--input-shape"),
        (["--input-shape", "28,0,1"], "--input-shape"),
        (["--input-shape", "a,b,c"], "--input-shape"),
        (["--input-shape", "3,3,1"], "--input-shape"),  # the CNN's pooling leaves 0x0
        (["--num-classes", "0"], "--num-classes"),
    ],
)
def test_summary_bad_flags_exit_2_with_one_line(argv, flag, capsys):
    assert run_cli(summary.cli_main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and flag in err and "Traceback" not in err


def test_train_refuses_an_unknown_model(data_dir, tmp_path, capsys):
    argv = ["--model", "vgg19", "--data-dir", str(data_dir), "--workdir", str(tmp_path / "run")]
    assert run_cli(train.cli_main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--model" in err and "resnet34" in err
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- training


def new_state(name: str, seed: int = 0) -> TrainState:
    model = models.create_model(name, 10)
    return create_train_state(
        model, optax.adam(LEARNING_RATES[name]), jax.random.key(seed), (28, 28, 1)
    )


def first_batch(split: data.Split, real: int = BATCH) -> steps.Batch:
    """The first ``real`` examples of ``split`` in a batch of BATCH (the rest masked)."""
    indices = np.arange(BATCH)
    mask = (indices < real).astype(np.float32)
    return data.make_batch(split, indices, mask)


# ResNet-34 is ResNet-18's code with more blocks per stage (its layout is checked by
# test_imagenet_parameter_counts_are_exact); compiling its step took 53 s of CI's 25 minutes.
@pytest.mark.parametrize("name", [pytest.param("vgg16", marks=pytest.mark.slow), "resnet18"])
def test_each_model_learns_real_digits_in_a_few_steps(name, mnist):
    """Five steps on one batch of real digits (the last 4 of 16 padding) bring its loss down."""
    state = new_state(name)
    batch = first_batch(mnist["train"], real=12)
    losses = []
    for _ in range(5):
        state, metrics = TRAIN_STEP(state, batch)
        losses.append(float(metrics["loss"]))
    assert int(state.nonfinite_step) == 0
    assert losses[-1] < 0.7 * losses[0], losses


def test_padding_does_not_reach_batchnorm_statistics(mnist):
    """The same real examples with other padding give the same step, statistics included."""
    state = new_state("resnet18")
    batch = first_batch(mnist["train"], real=12)
    other = {**batch, "image": batch["image"].copy(), "label": batch["label"].copy()}
    other["image"][12:] = 255 - other["image"][12:]  # padding: other pixels, other labels
    other["label"][12:] = (other["label"][12:] + 3) % 10
    a, metrics_a = TRAIN_STEP(state, batch)
    b, metrics_b = TRAIN_STEP(state, other)
    stats = state.model_state["batch_stats"]
    assert not np.allclose(
        stats["stem_bn"]["mean"], a.model_state["batch_stats"]["stem_bn"]["mean"]
    )
    np.testing.assert_allclose(float(metrics_a["loss"]), float(metrics_b["loss"]), rtol=1e-6)
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
        (a.params, a.model_state),
        (b.params, b.model_state),
    )
    full = {**batch, "mask": np.ones(BATCH, np.float32)}  # the padding counted: differs
    c, _ = TRAIN_STEP(state, full)
    assert not np.allclose(
        a.model_state["batch_stats"]["stem_bn"]["var"],
        c.model_state["batch_stats"]["stem_bn"]["var"],
    )


@pytest.fixture(scope="module")
def resnet_run(mnist, tmp_path_factory):
    """ResNet-18 trained through the training loop on 60 real digits, checkpointed twice."""
    splits = {
        "train": data.Split(mnist["train"].images[:60], mnist["train"].labels[:60]),
        "test": data.Split(mnist["test"].images[:100], mnist["test"].labels[:100]),
    }
    config = TrainConfig(
        model="resnet18",
        batch_size=BATCH,
        epochs=1,
        log_every=2,
        eval_batch_size=50,
        checkpoint_every=2,
    ).validate()
    path = tmp_path_factory.mktemp("resnet") / "run"
    path.mkdir()
    workdir.write_json(path / workdir.CONFIG, config.to_dict())
    placement = parallel.create_placement(1)
    start, steps = job.prepare_start_and_steps(config, splits, None, placement)  # a new run
    result = job.run_training(config, splits, path, start, steps, StopRequest(), placement)
    return path, splits, result


@pytest.mark.slow
def test_resnet_checkpoint_round_trips_its_batchnorm_statistics(resnet_run):
    path, _, result = resnet_run
    assert result.steps == 4  # 60 = 3 x 16 + 12: the last batch is padded
    config, restored, _, step = workdir.restore_run(path)
    assert step == 4 and config.model == "resnet18"
    initial = new_config_state(config).model_state["batch_stats"]
    trained = jax.device_get(result.state.model_state["batch_stats"])
    np.testing.assert_array_equal(initial["stem_bn"]["var"], np.ones(64))
    assert not np.allclose(trained["stem_bn"]["var"], initial["stem_bn"]["var"])
    jax.tree.map(
        np.testing.assert_array_equal,
        jax.device_get(restored.model_state["batch_stats"]),
        trained,
    )
    _, older, _, _ = workdir.restore_run(path, step=2)
    assert not np.allclose(
        older.model_state["batch_stats"]["stem_bn"]["mean"], trained["stem_bn"]["mean"]
    )


@pytest.mark.slow
def test_evaluation_uses_and_keeps_the_running_statistics(resnet_run):
    path, splits, result = resnet_run
    _, state, _, _ = workdir.restore_run(path)
    before = jax.device_get(state.model_state)
    batches = data.fixed_batches(splits["test"], 50)
    test = evaluate(jax.jit(steps.eval_step), state, batches)
    assert test.accuracy == result.test.accuracy and test.count == 100
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.model_state), before)
    # In eval mode an image's logits do not depend on the rest of its batch...
    images = splits["test"].images[:8]
    alone = steps.predict_logits(state, images[:1])
    np.testing.assert_allclose(steps.predict_logits(state, images)[:1], alone, atol=1e-4)
    # ...while in training mode the batch's statistics are used, and would be updated.
    _, updated = state.apply_fn(
        {"params": state.params, **state.model_state},
        steps.to_float_images(images),
        train=True,
        mutable=["batch_stats"],
    )
    assert not np.allclose(
        updated["batch_stats"]["stem_bn"]["mean"], before["batch_stats"]["stem_bn"]["mean"]
    )
