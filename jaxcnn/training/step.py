"""The pure step functions: where PyTorch's black box is opened.

The tutorial's training step reads::

    output = net(data)                   # forward
    loss = criterion(output, target)     # cross-entropy
    optimizer.zero_grad()                # clear .grad buffers
    loss.backward()                      # fill .grad buffers
    optimizer.step()                     # update the weights in place

Here the same step is one pure function, :func:`train_step`: ``jax.value_and_grad``
returns the loss *and* the gradient as a value (a pytree shaped like the parameters;
there are no ``.grad`` buffers, so nothing to zero), and ``tx.update`` followed by
``optax.apply_updates`` computes new parameters instead of changing the old ones.

Around it, each in a function of its own: :func:`in_chunks` computes the gradient of a
batch in independent parts (which XLA:CPU runs on several cores at once),
:func:`keep_if_finite` freezes the state at the first non-finite loss or gradient, and
:func:`gradient_statistics` adds per-layer norms for ``--log-grads`` (a variant of the
step compiled apart). :func:`scan_steps` runs many steps in one ``lax.scan``.

A batch is a dict of ``image`` (uint8, NHWC), ``label`` (int32) and ``mask`` (float32,
1 for a real example and 0 for padding), all of one fixed shape.
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxcnn.histograms import tree_histograms
from jaxcnn.training.state import TrainState
from jaxcnn.trees import layer_norms, update_ratios

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
PyTree = Any
#: ``(loss, (logits, new_model_state)), grads`` of a batch, as ``jax.value_and_grad`` returns.
LossAndGrads = tuple[tuple[jax.Array, tuple[jax.Array, PyTree]], PyTree]
GradFn = Callable[[TrainState, Batch], LossAndGrads]
#: Extra metrics of a step from ``(params, grads, updates)``; see :func:`gradient_statistics`.
#: (state before the step, batch, gradient, updates, parameters after the step) -> metrics
ExtraMetrics = Callable[[TrainState, Batch, PyTree, PyTree, PyTree], Metrics]


def to_float_images(images: jax.Array) -> jax.Array:
    """Scale uint8 images to float32 in [0, 1], as torchvision's ``ToTensor`` does."""
    return images.astype(jnp.float32) / 255.0


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over the real examples (``mask`` 1), as ``nn.CrossEntropyLoss``.

    Padding examples (``mask`` 0) contribute neither to the sum nor to the count.
    """
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def count_correct(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Return the number of real examples whose arg-max logit is the label."""
    return jnp.sum((jnp.argmax(logits, axis=-1) == labels) * mask)


def loss_fn(
    params: PyTree, state: TrainState, batch: Batch
) -> tuple[jax.Array, tuple[jax.Array, PyTree]]:
    """Forward pass and loss for ``params``; the function ``jax.value_and_grad`` differentiates.

    Returns:
        ``(loss, (logits, new_model_state))``.

    """
    mutable = list(state.model_state)
    logits, new_model_state = state.apply_fn(
        {"params": params, **state.model_state},
        to_float_images(batch["image"]),
        train=True,
        mask=batch["mask"],  # BatchNorm's batch statistics leave out the padding
        mutable=mutable,
    )
    loss = masked_cross_entropy(logits, batch["label"], batch["mask"])
    return loss, (logits, new_model_state)


def value_and_grad(state: TrainState, batch: Batch) -> LossAndGrads:
    """``jax.value_and_grad(loss_fn, has_aux=True)`` at ``state.params``: forward and backward."""
    return jax.value_and_grad(loss_fn, has_aux=True)(state.params, state, batch)


def no_extra_metrics(
    state: TrainState, batch: Batch, grads: PyTree, updates: PyTree, new_params: PyTree
) -> Metrics:
    """Return no metrics: the plain step measures nothing beyond loss and accuracy."""
    del state, batch, grads, updates, new_params
    return {}


def train_step(
    state: TrainState,
    batch: Batch,
    grad_fn: GradFn = value_and_grad,
    extra_metrics: ExtraMetrics = no_extra_metrics,
) -> tuple[TrainState, Metrics]:
    """Take one optimizer step on ``batch``; pure, meant to be ``jax.jit``-compiled.

    ``grad_fn`` computes the loss and gradient (:func:`value_and_grad`, or the same in
    parts: :func:`in_chunks`); ``extra_metrics`` adds measurements of the gradient and
    update (:func:`gradient_statistics`). Both are static: each choice compiles apart.

    Returns:
        The new state (:func:`keep_if_finite`: unchanged but for ``nonfinite_step`` if
        the loss or gradient is not finite) and the metrics: ``loss`` (mean over real
        examples), ``correct`` and ``count`` (sums over real examples).
    """
    # PyTorch: output = net(data); loss = criterion(output, target); loss.backward()
    (loss, (logits, model_state)), grads = grad_fn(state, batch)
    # PyTorch: optimizer.step() -- computed, not applied in place; no zero_grad() needed.
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    stepped = state.replace(
        step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state
    )
    new_state = keep_if_finite(state, stepped, loss, grads)
    metrics = {
        "loss": loss,
        "correct": count_correct(logits, batch["label"], batch["mask"]),
        "count": jnp.sum(batch["mask"]),
        **extra_metrics(state, batch, grads, updates, new_state.params),
    }
    return new_state, metrics


def keep_if_finite(
    state: TrainState, stepped: TrainState, loss: jax.Array, grads: PyTree
) -> TrainState:
    """Return ``stepped``, or ``state`` unchanged but for ``nonfinite_step`` after a bad step.

    If the loss or any gradient is not finite, or an earlier step's was not, the step
    changes nothing but ``nonfinite_step`` (the first bad step, counting from 1), so the
    host can stop at the first bad step without waiting on the device after every step.
    """
    finite = jnp.isfinite(loss) & tree_all_finite(grads)
    healthy = finite & (state.nonfinite_step == 0)
    # lax.select takes the scalar as it is; jnp.where would trace a broadcast for each shape.
    kept = jax.tree.map(lambda new, old: jax.lax.select(healthy, new, old), stepped, state)
    first_bad = (state.nonfinite_step == 0) & ~finite
    return kept.replace(nonfinite_step=jnp.where(first_bad, state.step + 1, state.nonfinite_step))


def tree_all_finite(tree: PyTree) -> jax.Array:
    """Return a scalar bool: whether every element of every leaf of ``tree`` is finite."""
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def gradient_statistics(
    state: TrainState,
    batch: Batch,
    grads: PyTree,
    updates: PyTree,
    new_params: PyTree,
    grad_fn: GradFn = value_and_grad,
) -> Metrics:
    """Return each layer's gradient norm and update-to-parameter ratio, and histograms.

    ``grad_norm`` and ``update_ratio`` per layer; ``histograms`` of every parameter
    leaf's weights after the step and of its gradient (:mod:`jaxcnn.histograms`), the
    latter from :func:`recomputed_gradients`.
    """
    gradients = recomputed_gradients(state, batch, grad_fn)
    return {
        "grad_norm": layer_norms(grads),
        "update_ratio": update_ratios(state.params, updates),
        "histograms": tree_histograms({"weights": new_params, "gradients": gradients}),
    }


def recomputed_gradients(state: TrainState, batch: Batch, grad_fn: GradFn) -> PyTree:
    """Return the gradient of ``batch`` at ``state`` once more, computed apart from the step's.

    For the histograms of a step with gradient statistics. Any further use of the step's
    own gradient (even returning it) changes how XLA:CPU fuses the weighted sum of the
    chunks' gradients with the update, and with it the last bits of the new parameters.
    Computed again behind an optimization barrier, which XLA neither fuses across nor
    merges with the first computation, it leaves the step's new parameters bitwise those
    of the plain step, at the cost of a second gradient at those log points.
    """
    state, batch = jax.lax.optimization_barrier((state, batch))
    return grad_fn(state, batch)[1]


def split_batch(batch: Batch, chunks: int) -> list[Batch]:
    """Split ``batch`` into ``chunks`` consecutive parts whose sizes differ by at most one."""
    size = batch["mask"].shape[0]
    bounds = [size * k // chunks for k in range(chunks + 1)]
    return [
        {key: value[start:stop] for key, value in batch.items()}
        for start, stop in itertools.pairwise(bounds)
    ]


#: :func:`value_and_grad` as a nested ``jax.jit``: inside the step's own jit, the parts
#: of equal size share one trace instead of one each (the step traces and lowers in 0.37
#: rather than 0.64 s at the start of a run). XLA inlines the call, so the compiled step
#: and its numbers are the same (``params_sha256`` of a 100-step run unchanged).
_value_and_grad_traced_once = jax.jit(value_and_grad)


def value_and_grad_in_chunks(state: TrainState, batch: Batch, chunks: int = 1) -> LossAndGrads:
    """:func:`value_and_grad` on ``batch``, in ``chunks`` independent parts.

    With ``chunks`` 1 this is exactly :func:`value_and_grad`. With more, each part's loss
    and gradient are computed apart and combined, weighted by the part's share of the
    batch's real examples, into the loss and gradient of the whole batch (equal up to
    float32 rounding). The parts share no intermediate value, so XLA:CPU can run them
    on different cores at once, which it does not do inside one convolution.

    Raises:
        ValueError: ``chunks`` > 1 for a model with batch statistics (BatchNorm),
            which would then normalise each part on its own statistics.

    """
    if chunks == 1:
        return value_and_grad(state, batch)
    if state.model_state:
        raise ValueError(
            f"chunks={chunks} needs a model without batch statistics; "
            "BatchNorm would normalise each chunk by its own statistics"
        )
    parts = split_batch(batch, chunks)
    count = jnp.maximum(jnp.sum(batch["mask"]), 1.0)
    weights = [jnp.sum(part["mask"]) / count for part in parts]
    results = [_value_and_grad_traced_once(state, part) for part in parts]
    loss = sum(
        weight * part_loss for weight, ((part_loss, _), _) in zip(weights, results, strict=True)
    )
    logits = jnp.concatenate([part_logits for (_, (part_logits, _)), _ in results])
    grads = jax.tree.map(
        lambda *leaves: sum(weight * leaf for weight, leaf in zip(weights, leaves, strict=True)),
        *[part_grads for _, part_grads in results],
    )
    return (loss, (logits, state.model_state)), grads


def in_chunks(chunks: int) -> GradFn:
    """Return the ``grad_fn`` of :func:`train_step` that computes a batch in ``chunks`` parts."""
    if chunks == 1:
        return value_and_grad
    return functools.partial(value_and_grad_in_chunks, chunks=chunks)


def loss_and_gradients(state: TrainState, batch: Batch) -> tuple[jax.Array, PyTree]:
    """Return the batch loss and its gradient with respect to ``state.params``.

    This is ``loss.backward()`` as a function: nothing is stored anywhere.
    """
    (loss, _), grads = value_and_grad(state, batch)
    return loss, grads


def predict_logits(state: TrainState, images: jax.Array) -> jax.Array:
    """Return the model's logits for uint8 NHWC ``images``, in inference mode."""
    return state.apply_fn(
        {"params": state.params, **state.model_state}, to_float_images(images), train=False
    )


def eval_step(state: TrainState, batch: Batch, chunks: int = 1) -> Metrics:
    """Evaluate ``batch`` in inference mode; pure, meant to be ``jax.jit``-compiled.

    ``chunks`` (static) evaluates the batch in that many independent parts, which
    XLA:CPU can run on different cores at once; the sums are the same.

    Returns:
        Sums over the real examples: ``loss_sum``, ``correct`` and ``count``, so that
        batches add up to exact totals over a split.
    """
    sums = [_eval_sums_traced_once(state, part) for part in split_batch(batch, chunks)]
    return jax.tree.map(lambda *parts: functools.reduce(operator.add, parts), *sums)


def _eval_sums(state: TrainState, batch: Batch) -> Metrics:
    """Return ``loss_sum``, ``correct`` and ``count`` of one batch's real examples."""
    logits = predict_logits(state, batch["image"])
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return {
        "loss_sum": jnp.sum(per_example * batch["mask"]),
        "correct": count_correct(logits, batch["label"], batch["mask"]),
        "count": jnp.sum(batch["mask"]),
    }


#: :func:`_eval_sums` traced once for all equal parts of a batch, as
#: :data:`_value_and_grad_traced_once` is (0.09 rather than 0.18 s at the start of a run).
_eval_sums_traced_once = jax.jit(_eval_sums)


def gather_batch(
    images: jax.Array, labels: jax.Array, indices: jax.Array, mask: jax.Array
) -> Batch:
    """Return the batch of rows ``indices`` of a split held on the device."""
    return {"image": images[indices], "label": labels[indices], "mask": mask}


def scan_steps(
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    indices: jax.Array,
    masks: jax.Array,
    step_fn: Callable[[TrainState, Batch], tuple[TrainState, Metrics]] = train_step,
    last_step_fn: Callable[[TrainState, Batch], tuple[TrainState, Metrics]] = train_step,
) -> tuple[TrainState, Metrics]:
    """Take ``len(indices)`` steps in one compiled loop (``lax.scan``), without the host.

    The training split (``images``, ``labels``) stays on the device; step ``i`` trains
    on rows ``indices[i]`` with ``masks[i]`` by ``step_fn``. The last step runs outside
    the scan, by ``last_step_fn``, so that it alone can measure gradient statistics.

    Returns:
        The state after the last step, and metrics shaped like one step's: the last
        step's ``loss`` (and gradient statistics), ``correct`` and ``count`` summed over
        all the steps.
    """

    def one_step(
        state: TrainState, rows: tuple[jax.Array, jax.Array]
    ) -> tuple[TrainState, Metrics]:
        state, metrics = step_fn(state, gather_batch(images, labels, *rows))
        return state, {"correct": metrics["correct"], "count": metrics["count"]}

    state, counted = jax.lax.scan(one_step, state, (indices[:-1], masks[:-1]))
    state, metrics = last_step_fn(state, gather_batch(images, labels, indices[-1], masks[-1]))
    metrics["correct"] = metrics["correct"] + jnp.sum(counted["correct"])
    metrics["count"] = metrics["count"] + jnp.sum(counted["count"])
    return state, metrics
