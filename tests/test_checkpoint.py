"""The checkpoint module: round trip, retention, and checkpoints that must be refused."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

from jaxcnn import models
from jaxcnn.config import TrainConfig
from jaxcnn.errors import CheckpointError
from jaxcnn.training import step as steps
from jaxcnn.training.checkpoints import Checkpoints
from jaxcnn.training.state import TrainState, create_train_state, state_shapes
from jaxcnn.training.timetable import Position


def new_state(num_classes: int = 10, seed: int = 0) -> TrainState:
    return create_train_state(
        models.CNN(num_classes=num_classes), optax.adam(1e-3), jax.random.key(seed), (28, 28, 1)
    )


def at_step(state: TrainState, step: int) -> TrainState:
    return state.replace(step=jnp.asarray(step, jnp.int32))


def test_round_trip_restores_equal_trees_and_position(tmp_path):
    state = new_state()
    batch = {
        "image": jnp.full((4, 28, 28, 1), 128, jnp.uint8),
        "label": jnp.arange(4),
        "mask": jnp.ones(4),
    }
    state, _ = jax.jit(steps.train_step)(state, batch)  # non-trivial Adam moments
    position = Position(epoch=1, batch=17, seed=0, correct=900, count=1088)
    checkpoints = Checkpoints(tmp_path)
    checkpoints.save(state, position, test_accuracy=0.5)
    restored, restored_position = checkpoints.restore(1, like=new_state(seed=9))
    checkpoints.close()
    chex.assert_trees_all_equal(restored.params, state.params)
    chex.assert_trees_all_equal(restored.opt_state, state.opt_state)
    assert int(restored.step) == 1 and restored_position == position


def test_a_checkpoint_restores_into_the_shapes_alone(tmp_path):
    config = TrainConfig().validate()
    state = at_step(new_state(), 7)
    checkpoints = Checkpoints(tmp_path)
    checkpoints.save(state, Position(0, 7, 0), test_accuracy=0.5)
    shapes = state_shapes(config)  # traced only: no initialisation is compiled or run
    assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(shapes))
    restored, _ = checkpoints.restore(7, like=shapes)
    checkpoints.close()
    chex.assert_trees_all_equal(restored.params, state.params)
    chex.assert_trees_all_equal(restored.opt_state, state.opt_state)
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(restored))
    assert int(restored.step) == 7 and int(restored.nonfinite_step) == 0
    # two buffers, as a donated state needs
    assert restored.step.unsafe_buffer_pointer() != restored.nonfinite_step.unsafe_buffer_pointer()
    assert restored.params["out"]["kernel"].sharding == jax.sharding.SingleDeviceSharding(
        jax.local_devices()[0]
    )


def test_keeps_the_newest_n_and_the_best(tmp_path):
    state = new_state()
    checkpoints = Checkpoints(tmp_path, keep=2)
    for step, accuracy in [(1, 0.5), (2, 0.9), (3, 0.4), (4, 0.3), (5, 0.2), (6, 0.1)]:
        checkpoints.save(at_step(state, step), Position(0, step, 0), test_accuracy=accuracy)
    assert checkpoints.steps() == [2, 5, 6]
    assert checkpoints.latest_step() == 6
    checkpoints.close()


def test_a_checkpoint_of_other_shapes_is_refused(tmp_path):
    checkpoints = Checkpoints(tmp_path)
    checkpoints.save(new_state(num_classes=5), Position(0, 0, 0), test_accuracy=0.1)
    with pytest.raises(CheckpointError, match=r"step 0 .*cannot be restored"):
        checkpoints.restore(0, like=new_state(num_classes=10))
    checkpoints.close()


def test_a_missing_step_is_refused_with_the_available_ones(tmp_path):
    checkpoints = Checkpoints(tmp_path)
    checkpoints.save(at_step(new_state(), 3), Position(0, 3, 0), test_accuracy=0.1)
    with pytest.raises(CheckpointError, match=r"no checkpoint at step 4 .*available: 3"):
        checkpoints.restore(4, like=new_state())
    checkpoints.close()
