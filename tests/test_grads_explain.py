"""The gradient toolbox, the step taken apart by hand, --log-grads, and their commands."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers.common import run_cli, run_metrics

from jaxcnn import data, plot, trees
from jaxcnn import explain as explain_command
from jaxcnn import grads as grads_command
from jaxcnn.config import TrainConfig
from jaxcnn.inspection import gradients as grads
from jaxcnn.inspection import hand_step as explain
from jaxcnn.models import cpu_forms as layers
from jaxcnn.training import step as steps
from jaxcnn.training.state import new_state

TOLERANCE = 1e-5


def relative_error(mine, reference) -> float:
    worst = max(d.max_relative for d in grads.compare(mine, reference))
    return worst


def vjp(function, *inputs):
    return jax.vjp(function, *inputs)[1]


def reference_conv(x, w, b):
    return (
        jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        + b
    )


@pytest.fixture()
def rng():
    return np.random.default_rng(0)


def test_conv_forward_and_backward_match_xla_and_autodiff(rng):
    x = jnp.asarray(rng.normal(size=(3, 8, 10, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(5, 5, 4, 6)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(6,)), jnp.float32)
    dy = jnp.asarray(rng.normal(size=(3, 8, 10, 6)), jnp.float32)
    assert relative_error(explain.conv2d(x, w, b), reference_conv(x, w, b)) < TOLERANCE
    expected = vjp(reference_conv, x, w, b)(dy)
    assert relative_error(explain.conv2d_backward(x, w, dy), expected) < TOLERANCE


def test_relu_backward_matches_autodiff_including_exact_zeros(rng):
    x = jnp.asarray(rng.integers(-2, 3, size=(4, 6, 6, 3)), jnp.float32)  # many exact zeros
    dy = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    assert bool(jnp.any(x == 0))
    np.testing.assert_array_equal(explain.relu_backward(x, dy), vjp(jax.nn.relu, x)(dy)[0])


def test_max_pool_backward_matches_autodiff_with_ties(rng):
    """Values from {0, 1, 2}: most windows have tied maxima; both split the gradient equally."""
    x = jnp.asarray(rng.integers(0, 3, size=(4, 8, 8, 3)), jnp.float32)
    dy = jnp.asarray(rng.normal(size=(4, 4, 4, 3)), jnp.float32)
    windows = np.asarray(x).reshape(4, 4, 2, 4, 2, 3)
    maxima = (windows == windows.max(axis=(2, 4), keepdims=True)).sum(axis=(2, 4))
    assert (maxima > 1).mean() > 0.3  # the test really has ties
    np.testing.assert_array_equal(explain.max_pool(x), layers.max_pool_2x2(x))
    hand = explain.max_pool_backward(x, dy)
    np.testing.assert_allclose(hand, vjp(layers.max_pool_2x2, x)(dy)[0], rtol=1e-6)
    np.testing.assert_allclose(hand.sum(), dy.sum(), rtol=1e-5)  # nothing lost, nothing made


def test_dense_flatten_and_loss_backward_match_autodiff(rng):
    x = jnp.asarray(rng.normal(size=(5, 3, 3, 2)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(18, 4)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(4,)), jnp.float32)
    flat = explain.flatten(x)
    np.testing.assert_array_equal(explain.flatten_backward(x.shape, flat), x)
    dy = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
    assert (
        relative_error(explain.dense_backward(flat, w, dy), vjp(explain.dense, flat, w, b)(dy))
        < TOLERANCE
    )
    logits = explain.dense(flat, w, b)
    labels, mask = jnp.array([0, 3, 1, 2, 2]), jnp.array([1.0, 1.0, 0.0, 1.0, 0.0])
    loss = explain.softmax_cross_entropy(logits, labels, mask)
    np.testing.assert_allclose(loss, steps.masked_cross_entropy(logits, labels, mask), rtol=1e-6)
    expected = jax.grad(steps.masked_cross_entropy)(logits, labels, mask)
    hand = explain.softmax_cross_entropy_backward(logits, labels, mask)
    assert relative_error(hand, expected) < TOLERANCE
    np.testing.assert_array_equal(hand[2], 0.0)  # a masked example gets no gradient


@pytest.fixture(scope="module")
def real_batch(mnist):
    indices = data.epoch_permutation(0, 0, 60_000)[:64]
    return data.make_batch(mnist["train"], indices, np.ones(64, np.float32))


def test_the_whole_hand_gradient_matches_jax_grad(real_batch):
    state = new_state(TrainConfig())
    images = steps.to_float_images(real_batch["image"])
    loss, hand = explain.loss_and_grad(
        state.params, images, jnp.asarray(real_batch["label"]), jnp.asarray(real_batch["mask"])
    )
    autodiff_loss, autodiff = grads.loss_and_gradients(state, real_batch)
    np.testing.assert_allclose(float(loss), autodiff_loss, rtol=1e-6)
    for difference in grads.compare(hand, autodiff):
        assert difference.max_relative < TOLERANCE, difference


def test_hand_adam_matches_optax_over_five_steps(mnist):
    state = new_state(TrainConfig())
    tx = optax.adam(1e-3)
    optax_params, optax_state = state.params, tx.init(state.params)
    hand_params, hand_state = state.params, explain.adam_init(state.params)
    order = data.epoch_permutation(0, 0, 60_000)
    for step in range(5):
        batch = data.make_batch(
            mnist["train"], order[64 * step : 64 * step + 64], np.ones(64, np.float32)
        )
        _, g = grads.loss_and_gradients(state.replace(params=optax_params), batch)
        updates, optax_state = tx.update(g, optax_state, optax_params)
        optax_params = optax.apply_updates(optax_params, updates)
        hand_params, hand_state = explain.adam_step(g, hand_state, hand_params, 1e-3)
    assert hand_state.count == 5
    for difference in grads.compare(hand_params, optax_params):
        assert difference.max_relative < TOLERANCE, difference


def test_walk_step_agrees_at_every_stage(real_batch):
    checks, _ = explain.walk_step(new_state(TrainConfig()), real_batch, 1e-3)
    assert len(checks) == 16 and all(check.ok for check in checks), explain.format_checks(checks)


def test_summary_functions_give_exact_numbers():
    tree = {
        "conv": {
            "bias": jnp.array([0.0, 0.0, 0.0, 0.0]),
            "kernel": jnp.array([[1.0, -2.0], [2.0, 0.0]]),
        },
        "out": {"bias": jnp.array([0.0]), "kernel": jnp.array([[-6.0], [8.0]])},
    }
    stats = {s.path: s for s in grads.summarize(tree)}
    assert list(stats) == ["conv/bias", "conv/kernel", "out/bias", "out/kernel"]
    assert stats["conv/kernel"].shape == (2, 2)
    assert stats["conv/kernel"].l2_norm == 3.0
    assert stats["conv/kernel"].rms == 1.5
    assert stats["conv/kernel"].max_abs == 2.0
    assert stats["conv/kernel"].zero_fraction == 0.25
    assert stats["conv/bias"].zero_fraction == 1.0
    assert stats["out/kernel"].l2_norm == 10.0
    assert grads.global_norm(tree) == pytest.approx(np.sqrt(109.0))
    norms = {layer: float(v) for layer, v in trees.layer_norms(tree).items()}
    assert norms == {"conv": 3.0, "out": 10.0}
    updates = jax.tree.map(lambda leaf: leaf * 1e-3, tree)
    ratios = {layer: float(v) for layer, v in trees.update_ratios(tree, updates).items()}
    assert ratios == pytest.approx({"conv": 1e-3, "out": 1e-3})
    other = jax.tree.map(lambda leaf: leaf + 0.5, tree)
    for difference in grads.compare(other, tree):
        assert difference.max_abs == 0.5


def test_log_grads_fields_are_logged(trained):
    records = run_metrics(trained)
    assert [r["step"] for r in records] == [1, 101, 201]
    for record in records:
        assert set(record["grad_norm"]) == {"conv1/conv", "conv2/conv", "out"}
        assert set(record["update_ratio"]) == {"conv1/conv", "conv2/conv", "out"}
        assert all(value > 0 for value in record["grad_norm"].values())


def test_grads_command_on_a_real_checkpoint(trained, data_dir, tmp_path, capsys):
    out = tmp_path / "grads.npz"
    argv = [
        "--workdir",
        str(trained),
        "--step",
        "200",
        "--data-dir",
        str(data_dir),
        "--save",
        str(out),
    ]
    assert run_cli(grads_command.cli_main, argv) == 0
    text = capsys.readouterr().out
    assert (
        "gradient at checkpoint step 200" in text and "out/kernel" in text and "global norm" in text
    )
    saved = np.load(out)
    assert sorted(saved.files) == [
        "conv1/conv/bias", "conv1/conv/kernel", "conv2/conv/bias", "conv2/conv/kernel",
        "out/bias", "out/kernel",
    ]  # fmt: skip
    assert saved["out/kernel"].shape == (1568, 10)
    assert run_cli(grads_command.cli_main, argv) == 2  # the file exists now: not overwritten
    assert "exists" in capsys.readouterr().err


def test_explain_command_walks_a_real_step(data_dir, capsys):
    assert (
        run_cli(explain_command.cli_main, ["--data-dir", str(data_dir), "--batch-size", "16"]) == 0
    )
    out = capsys.readouterr().out
    assert "16 of 16 stages agree" in out and "conv1 conv backward" in out and "adam step" in out


@pytest.mark.parametrize(
    ("size", "problem"),
    [
        ("70000", "--batch-size 70000 is larger than the training split of mnist (60000"),
        ("0", "--batch-size"),
    ],
)
def test_explain_refuses_a_batch_it_cannot_take(size, problem, data_dir, capsys):
    argv = ["--data-dir", str(data_dir), "--batch-size", size]
    assert run_cli(explain_command.cli_main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and problem in err and "Traceback" not in err


def test_plot_command_writes_the_pictures(trained, capsys):
    assert run_cli(plot.cli_main, ["--workdir", str(trained)]) == 0
    for name in ("loss.png", "accuracy.png", "gradients.png"):
        assert (trained / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (["--save", "taken"], "must end in .npz"),  # np.savez would write taken.npz
        (["--save", "taken.npz"], "exists"),
        (["--save", "no/such/folder/g.npz"], "does not exist"),
        (["--batch-size", "1000000000000"], "larger than the training split of mnist (60000"),
    ],
)
def test_grads_refuses_what_it_cannot_do_before_computing(
    flags, problem, trained, data_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken.npz").write_bytes(b"the user's file")
    argv = ["--workdir", str(trained), "--data-dir", str(data_dir), *flags]
    assert run_cli(grads_command.cli_main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and problem in err and "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["taken.npz"]
    assert (tmp_path / "taken.npz").read_bytes() == b"the user's file"


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"\xff\xfe garbage\n", "line 4: not a line of jaxcnn's log"),
        (b'{"step": 301, "loss": 0.1}\n', "line 4: the record has no test_loss"),
        (b"5\n", "line 4: not a log record with an integer step"),
    ],
)
def test_plot_names_the_damaged_line_of_the_log(line, problem, trained, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_bytes((trained / "metrics.jsonl").read_bytes() + line)
    assert run_cli(plot.cli_main, ["--workdir", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"metrics.jsonl, {problem}" in err
    assert [p.name for p in run.iterdir()] == ["metrics.jsonl"]
