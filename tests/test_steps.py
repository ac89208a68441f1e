"""The training step: one trace, finite and correct gradients, masking, determinism."""

from __future__ import annotations

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from jaxcnn import data, models
from jaxcnn.training import step as steps
from jaxcnn.training.state import TrainState, create_train_state


def new_state(seed: int = 0, learning_rate: float = 1e-3) -> TrainState:
    return create_train_state(
        models.CNN(), optax.adam(learning_rate), jax.random.key(seed), (28, 28, 1)
    )


def real_batch(split: data.Split, indices: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """The examples ``indices`` of ``split``, padded to ``batch_size`` with masked examples."""
    mask = np.zeros(batch_size, np.float32)
    mask[: len(indices)] = 1
    padded = np.pad(indices, (0, batch_size - len(indices)), constant_values=len(split) - 1)
    return data.make_batch(split, padded, mask)


def run_steps(split: data.Split, seed: int, num_steps: int, batch_size: int = 32) -> TrainState:
    state = new_state(seed)
    train_step = jax.jit(steps.train_step)
    order = data.epoch_permutation(seed, 0, len(split))
    batches = itertools.islice(data.batch_indices(order, batch_size), num_steps)
    for indices, mask in batches:
        state, _ = train_step(state, data.make_batch(split, indices, mask))
    return state


def test_train_step_traces_once_over_a_whole_epoch(mnist):
    """An epoch whose last batch is partial (200 = 3 x 64 + 8) compiles the step once."""
    split = data.Split(mnist["train"].images[:200], mnist["train"].labels[:200])
    batch_size = 64

    @chex.assert_max_traces(n=1)
    def traced_step(state, batch):
        return steps.train_step(state, batch)

    train_step = jax.jit(traced_step)
    state = new_state()
    counts = []
    for indices, mask in data.batch_indices(data.epoch_permutation(0, 0, 200), batch_size):
        state, metrics = train_step(state, data.make_batch(split, indices, mask))
        counts.append(int(metrics["count"]))
    assert counts == [64, 64, 64, 8]
    assert int(state.step) == 4


def test_gradients_are_finite(mnist):
    state = new_state()
    batch = real_batch(mnist["train"], np.arange(16), 16)
    (_, _), grads = jax.value_and_grad(steps.loss_fn, has_aux=True)(state.params, state, batch)
    chex.assert_tree_all_finite(grads)
    chex.assert_trees_all_equal_shapes(grads, state.params)


def test_loss_gradient_matches_finite_differences(mnist):
    """Reverse-mode gradient against central differences, in float64.

    ReLU and max-pool have kinks; a step of 1e-7 is small enough not to cross one.
    """
    batch = real_batch(mnist["train"], np.arange(4), 4)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), new_state().params)
        images = jnp.asarray(batch["image"], jnp.float64) / 255.0
        labels, mask = jnp.asarray(batch["label"]), jnp.asarray(batch["mask"], jnp.float64)

        def loss(p):
            logits = models.CNN().apply({"params": p}, images)
            return steps.masked_cross_entropy(logits, labels, mask)

        check_grads(loss, (params,), order=1, modes=("rev",), eps=1e-7, atol=1e-7, rtol=1e-6)


def test_padded_batch_gives_the_unpadded_loss_and_gradients(mnist):
    train = mnist["train"]
    state = new_state()
    grad_fn = jax.jit(jax.value_and_grad(steps.loss_fn, has_aux=True))
    exact = data.make_batch(train, np.arange(10), np.ones(10, np.float32))
    padded = real_batch(train, np.arange(10), 16)  # six padding rows hold a real image
    (loss_a, _), grads_a = grad_fn(state.params, state, exact)
    (loss_b, _), grads_b = grad_fn(state.params, state, padded)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    chex.assert_trees_all_close(grads_a, grads_b, rtol=1e-5, atol=1e-7)
    unmasked = dict(padded, mask=np.ones(16, np.float32))
    (loss_c, _), _ = grad_fn(state.params, state, unmasked)
    assert abs(float(loss_c) - float(loss_a)) > 1e-4  # the padding rows would change the loss


def test_same_seed_is_bitwise_reproducible_and_different_seed_differs(mnist):
    a = run_steps(mnist["train"], seed=3, num_steps=20)
    b = run_steps(mnist["train"], seed=3, num_steps=20)
    c = run_steps(mnist["train"], seed=4, num_steps=20)
    chex.assert_trees_all_equal(a.params, b.params)
    chex.assert_trees_all_equal(a.opt_state, b.opt_state)
    with pytest.raises(AssertionError):
        chex.assert_trees_all_close(a.params, c.params)


def test_train_step_lowers_the_loss_on_a_fixed_batch(mnist):
    state = new_state()
    batch = real_batch(mnist["train"], np.arange(64), 64)
    train_step = jax.jit(steps.train_step)
    state, first = train_step(state, batch)
    for _ in range(20):
        state, metrics = train_step(state, batch)
    assert float(metrics["loss"]) < 0.5 * float(first["loss"])
    assert int(state.step) == 21


def test_eval_step_counts_only_real_examples(mnist):
    state = new_state()
    test = mnist["test"]
    batches = data.fixed_batches(test, 3000)  # 10,000 = 3 x 3000 + 1000, last one padded
    eval_step = jax.jit(steps.eval_step)
    totals = [jax.device_get(eval_step(state, batch)) for batch in batches]
    assert sum(int(t["count"]) for t in totals) == 10_000
    whole = eval_step(state, data.make_batch(test, np.arange(10_000), np.ones(10_000, np.float32)))
    assert sum(int(t["correct"]) for t in totals) == int(whole["correct"])
    np.testing.assert_allclose(
        sum(float(t["loss_sum"]) for t in totals), float(whole["loss_sum"]), rtol=1e-5
    )


@pytest.mark.parametrize("chunks", [2, 4, 5])
def test_a_batch_in_chunks_gives_the_whole_batch_s_loss_and_gradients(mnist, chunks):
    # 40 real examples padded to 64: with 4 chunks of 16 the third is half padding and
    # the fourth all padding; 5 chunks are of unequal sizes (12 and 13).
    state = new_state()
    batch = real_batch(mnist["train"], np.arange(40), 64)
    whole = jax.jit(steps.value_and_grad_in_chunks)
    parts = jax.jit(steps.value_and_grad_in_chunks, static_argnums=2)
    (loss_a, (logits_a, _)), grads_a = whole(state, batch)
    (loss_b, (logits_b, _)), grads_b = parts(state, batch, chunks)
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-6)
    np.testing.assert_allclose(logits_b, logits_a, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(grads_b, grads_a, rtol=1e-5, atol=1e-7)
    step = jax.jit(steps.train_step, static_argnames="grad_fn")
    _, metrics_a = step(state, batch)
    _, metrics_b = step(state, batch, grad_fn=steps.in_chunks(chunks))
    assert int(metrics_b["correct"]) == int(metrics_a["correct"])
    assert int(metrics_b["count"]) == int(metrics_a["count"]) == 40


def test_chunks_are_refused_for_batchnorm_models():
    state = create_train_state(
        models.create_model("resnet18", 10), optax.adam(1e-3), jax.random.key(0), (28, 28, 1)
    )
    batch = real_batch(
        data.Split(np.zeros((4, 28, 28, 1), np.uint8), np.zeros(4, np.int32)), np.arange(4), 4
    )
    with pytest.raises(ValueError, match="BatchNorm"):
        jax.eval_shape(
            lambda s, b: steps.train_step(s, b, grad_fn=steps.in_chunks(2)), state, batch
        )


def test_eval_in_chunks_counts_the_same(mnist):
    state = new_state()
    batch = real_batch(mnist["test"], np.arange(900), 1000)
    whole = jax.device_get(jax.jit(steps.eval_step)(state, batch))
    parts = jax.device_get(jax.jit(steps.eval_step, static_argnums=2)(state, batch, 3))
    assert int(parts["count"]) == int(whole["count"]) == 900
    assert int(parts["correct"]) == int(whole["correct"])
    np.testing.assert_allclose(parts["loss_sum"], whole["loss_sum"], rtol=1e-5)
