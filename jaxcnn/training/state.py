"""The training state: everything that changes during training, as one pytree."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
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


@dataclasses.dataclass(frozen=True, eq=False)
class Initialisation:
    """A model's and its optimizer's initialisation, traced and lowered, not yet compiled.

    Its shapes are known before it is compiled (:meth:`state_shapes`), so the training
    steps can be traced against them while it compiles (:mod:`jaxcnn.training.job`).

    Attributes:
        lowered: ``initialise(rng) -> (params, model_state, opt_state)``, lowered.
        rng: the PRNG key it is run with.
        apply_fn: the model's ``apply``.
        tx: the optimizer.

    """

    lowered: jax.stages.Lowered
    rng: jax.Array
    apply_fn: Callable[..., Any]
    tx: optax.GradientTransformation

    def state_shapes(self, sharding: jax.sharding.Sharding | None = None) -> TrainState:
        """Return the state's structure, with ``jax.ShapeDtypeStruct`` leaves and no values.

        Each leaf carries ``sharding`` (none by default): what the steps are compiled
        against, and what a checkpoint is restored into, without running the
        initialisation (:func:`state_shapes`).
        """
        params, model_state, opt_state = jax.tree.map(
            lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
            self.lowered.out_info,
        )
        counter = jax.ShapeDtypeStruct((), jnp.int32, sharding=sharding)
        return self._state(params, model_state, opt_state, counter, counter)

    def compile(self) -> jax.stages.Compiled:
        """Compile the initialisation (with :data:`INIT_COMPILER_OPTIONS`)."""
        return self.lowered.compile(compiler_options=INIT_COMPILER_OPTIONS)

    def initial_state(self) -> TrainState:
        """Compile and run the initialisation: the initial state, on the default device."""
        return self.run(self.compile())

    def run(self, compiled: jax.stages.Compiled) -> TrainState:
        """Return the initial state: the compiled initialisation run on :attr:`rng`."""
        params, model_state, opt_state = compiled(self.rng)
        # Two buffers (both may be donated), put rather than computed: jnp.zeros compiles.
        step, nonfinite_step = (jax.device_put(np.zeros((), np.int32)) for _ in range(2))
        return self._state(params, model_state, opt_state, step, nonfinite_step)

    def _state(
        self,
        params: PyTree,
        model_state: PyTree,
        opt_state: optax.OptState,
        step: Any,
        nonfinite_step: Any,
    ) -> TrainState:
        """Return the state of these variables and counters (zeros or their shapes)."""
        return TrainState(
            step=step,
            params=params,
            model_state=model_state,
            opt_state=opt_state,
            nonfinite_step=nonfinite_step,
            apply_fn=self.apply_fn,
            tx=self.tx,
        )


def lower_initialisation(
    model: nn.Module,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    image_shape: tuple[int, int, int],
) -> Initialisation:
    """Trace and lower the initialisation of ``model`` for images of ``image_shape`` and ``tx``.

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
    return Initialisation(jax.jit(initialise).lower(rng), rng, model.apply, tx)


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    image_shape: tuple[int, int, int],
) -> TrainState:
    """Initialise ``model`` for images of ``image_shape`` (H, W, C) and ``tx``'s state.

    The arguments are those of :func:`lower_initialisation`.
    """
    return lower_initialisation(model, tx, rng, image_shape).initial_state()


def new_initialisation(config: TrainConfig) -> Initialisation:
    """Return the lowered initialisation of ``config``'s model and optimizer."""
    spec = data.DATASETS[config.dataset]
    return lower_initialisation(
        models.create_model(config.model, spec.num_classes),
        create_optimizer(config),
        jax.random.key(config.seed),
        spec.image_shape,
    )


def state_shapes(config: TrainConfig, sharding: jax.sharding.Sharding | None = None) -> TrainState:
    """Return the shapes of ``config``'s training state, each leaf placed with ``sharding``.

    The initialisation is traced, not compiled or run (only its PRNG key is made): a
    checkpoint is restored into these shapes
    (:meth:`jaxcnn.training.checkpoints.Checkpoints.restore`, which places a leaf without
    a sharding on the first local device), so restoring one costs no compilation of the
    initialisation.
    """
    return new_initialisation(config).state_shapes(sharding)


def new_state(config: TrainConfig) -> TrainState:
    """Return the freshly initialised training state of ``config``."""
    return new_initialisation(config).initial_state()
