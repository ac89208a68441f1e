"""The initial state: compiled at a lower optimisation level, with the default's exact values."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

from jaxcnn import models
from jaxcnn.training.state import INIT_COMPILER_OPTIONS, create_train_state, lower_initialisation


@pytest.mark.parametrize("name", ["cnn", "resnet18"])  # resnet18 has BatchNorm statistics
def test_the_initial_state_is_bitwise_what_xla_default_compilation_gives(name):
    assert INIT_COMPILER_OPTIONS  # else this test compares the default with itself
    model, tx, key = models.create_model(name, 10), optax.adam(1e-3), jax.random.key(3)
    state = create_train_state(model, tx, key, (28, 28, 1))

    def initialise(rng: jax.Array) -> tuple:
        variables = model.init(rng, jnp.zeros((1, 28, 28, 1), jnp.float32), train=False)
        return variables, tx.init(variables["params"])

    variables, opt_state = jax.jit(initialise)(key)
    chex.assert_trees_all_equal(state.params, variables["params"])
    chex.assert_trees_all_equal(state.opt_state, opt_state)
    model_state = {k: v for k, v in variables.items() if k != "params"}
    chex.assert_trees_all_equal(state.model_state, model_state)
    assert (name == "resnet18") == bool(jax.tree.leaves(state.model_state))


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_the_shapes_known_before_compiling_are_those_of_the_initial_state(name):
    model, tx = models.create_model(name, 10), optax.adam(1e-3)
    initialisation = lower_initialisation(model, tx, jax.random.key(3), (28, 28, 1))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shapes = initialisation.state_shapes(device)  # what the job compiles its steps against
    state = initialisation.run(initialisation.compile())
    chex.assert_trees_all_equal_structs(shapes, state)
    chex.assert_trees_all_equal_shapes_and_dtypes(shapes, state)
    assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(shapes))
    assert state.step.dtype == state.nonfinite_step.dtype == jnp.int32
    # two buffers, as a donated state needs
    assert state.step.unsafe_buffer_pointer() != state.nonfinite_step.unsafe_buffer_pointer()
    assert int(state.step) == int(state.nonfinite_step) == 0
