"""The training state: everything that changes during training, as one pytree."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import struct

from jaxcnn import data, models
from jaxcnn.config import TrainConfig
from jaxcnn.training.optim import create_optimizer

PyTree = Any


@struct.dataclass
class TrainState:
    """Everything that changes during training, as one pytree.

    Attributes:
        step: number of optimizer steps taken.
        params: the model's ``params`` collection.
        model_state: the model's other variable collections (for example BatchNorm's
            ``batch_stats``); empty for the tutorial's CNN.
        opt_state: the optimizer's state (Adam's moments and step count).
        nonfinite_step: 0 while every step's loss and gradient were finite; else the
            step (counting from 1) at which one was not. From that step on the state is
            frozen: :func:`jaxcnn.training.step.train_step` leaves it as it was before the bad step.
        apply_fn: the model's ``apply`` (static, not a leaf).
        tx: the optax optimizer (static, not a leaf).

    """

    step: jax.Array
    params: PyTree
    model_state: PyTree
    opt_state: optax.OptState
    nonfinite_step: jax.Array
    apply_fn: Callable[..., Any] = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)


#: XLA options for compiling the initialisation, which runs once: at backend optimisation
#: level 1 its compilation took half the time of XLA's default on a CPU (the tutorial's CNN
#: 0.77 against 1.52 s, ResNet-18 2.3 against 5.3 s), with bitwise the same values
#: (``tests/test_state.py``). Level 0 changes them.
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    image_shape: tuple[int, int, int],
) -> TrainState:
    """Initialise ``model`` for images of ``image_shape`` (H, W, C) and ``tx``'s state.

    Args:
        model: a linen module called as ``model(images, train=...)``.
        tx: the optimizer.
        rng: PRNG key for the parameter initialisation.
        image_shape: shape of one image, channels last.

    """

    def initialise(rng: jax.Array) -> tuple[PyTree, PyTree, optax.OptState]:
        variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
        params = variables["params"]
        model_state = {name: value for name, value in variables.items() if name != "params"}
        return params, model_state, tx.init(params)

    # One compilation under jit; run op by op, the initialisers took 54 (6 s on a CPU).
    compiled = jax.jit(initialise).lower(rng).compile(compiler_options=INIT_COMPILER_OPTIONS)
    params, model_state, opt_state = compiled(rng)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=opt_state,
        nonfinite_step=jnp.zeros((), jnp.int32),
        apply_fn=model.apply,
        tx=tx,
    )


def new_state(config: TrainConfig) -> TrainState:
    """Return the freshly initialised training state of ``config``."""
    spec = data.DATASETS[config.dataset]
    return create_train_state(
        models.create_model(config.model, spec.num_classes),
        create_optimizer(config),
        jax.random.key(config.seed),
        spec.image_shape,
    )
