"""One training step of the tutorial's CNN, taken apart by hand.

``loss.backward()`` and ``optimizer.step()`` are not magic: this module computes the
forward pass, every layer's backward pass, and Adam's update in plain ``jax.numpy``,
one short function each, with the formula it computes beside it. Nothing here is used
for training (``jax.value_and_grad`` and ``optax`` are); it is here to be read, and
checked against them: ``python -m jaxcnn.explain`` walks one step on a real batch and
prints, for every stage, the largest difference from autodiff and from optax.

Shapes are NHWC; ``N`` is the batch, ``K`` the kernel size, ``P = K // 2`` the padding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxcnn.models import cpu_forms
from jaxcnn.training.state import TrainState
from jaxcnn.training.step import Batch, loss_and_gradients, masked_cross_entropy, to_float_images

#: Largest relative difference (to the reference's largest magnitude) accepted, float32.
TOLERANCE = 1e-5
PyTree = Any

# ----------------------------------------------------------------------------- layers


def conv2d(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """Convolution as deep learning means it: a cross-correlation, stride 1, 'same' padding.

    y[n, i, j, f] = b[f] + Σ_{u, v, c} xp[n, i + u, j + v, c] · w[u, v, c, f],
    where xp is x with P zeros added on each side of H and W.
    """
    k, p = w.shape[0], w.shape[0] // 2
    h, wd = x.shape[1], x.shape[2]
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    y = sum(
        jnp.einsum("nhwc,cf->nhwf", xp[:, u : u + h, v : v + wd, :], w[u, v])
        for u in range(k)
        for v in range(k)
    )
    return y + b


def conv2d_backward(
    x: jax.Array, w: jax.Array, dy: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Gradients of :func:`conv2d` with respect to its input, kernel and bias.

    db[f]          = Σ_{n, i, j} dy[n, i, j, f]
    dw[u, v, c, f] = Σ_{n, i, j} xp[n, i + u, j + v, c] · dy[n, i, j, f]
                     (the input cross-correlated with the output gradient)
    dxp[n, i + u, j + v, c] += dy[n, i, j, f] · w[u, v, c, f], then dx = dxp without
                     its padding (the output gradient convolved with the kernel).
    """
    k, p = w.shape[0], w.shape[0] // 2
    h, wd = x.shape[1], x.shape[2]
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    db = dy.sum(axis=(0, 1, 2))
    dw = jnp.stack(
        [
            jnp.stack(
                [jnp.einsum("nhwc,nhwf->cf", xp[:, u : u + h, v : v + wd, :], dy) for v in range(k)]
            )
            for u in range(k)
        ]
    )
    dxp = jnp.zeros_like(xp)
    for u in range(k):
        for v in range(k):
            dxp = dxp.at[:, u : u + h, v : v + wd, :].add(jnp.einsum("nhwf,cf->nhwc", dy, w[u, v]))
    return dxp[:, p : p + h, p : p + wd, :], dw, db


def relu(x: jax.Array) -> jax.Array:
    """Y = max(x, 0)."""
    return jnp.maximum(x, 0)


def relu_backward(x: jax.Array, dy: jax.Array) -> jax.Array:
    """Dx = dy where x > 0, else 0 (at exactly 0 the gradient is taken as 0, as JAX does)."""
    return dy * (x > 0)


def _windows(x: jax.Array) -> jax.Array:
    """View NHWC ``x`` (H, W even) as 2×2 windows: (N, H/2, 2, W/2, 2, C)."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c)


def max_pool(x: jax.Array) -> jax.Array:
    """y[n, i, j, c] = max of x over the window rows 2i..2i+1, columns 2j..2j+1."""
    return _windows(x).max(axis=(2, 4))


def max_pool_backward(x: jax.Array, dy: jax.Array) -> jax.Array:
    """Route each window's gradient to the input that was its maximum.

    dx = dy at the arg-max of each window, 0 elsewhere. Where several inputs tie for the
    maximum, the gradient is split equally among them: that is JAX's rule for the
    gradient of ``max`` (PyTorch's max-pool gives it all to the first one instead).
    """
    windows = _windows(x)
    is_max = windows == windows.max(axis=(2, 4), keepdims=True)
    share = is_max / is_max.sum(axis=(2, 4), keepdims=True)
    return (share * dy[:, :, None, :, None, :]).reshape(x.shape)


def flatten(x: jax.Array) -> jax.Array:
    """(N, H, W, C) -> (N, H·W·C), in H, W, C order."""
    return x.reshape(x.shape[0], -1)


def flatten_backward(shape: tuple[int, ...], dy: jax.Array) -> jax.Array:
    """Flattening moves no values, so its gradient is the same numbers reshaped back."""
    return dy.reshape(shape)


def dense(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """Y = x · w + b, with w of shape (inputs, outputs)."""
    return x @ w + b


def dense_backward(
    x: jax.Array, w: jax.Array, dy: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Dx = dy · wᵀ, dw = xᵀ · dy, db = Σ_n dy."""
    return dy @ w.T, x.T @ dy, dy.sum(axis=0)


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """L = -(1/N) Σ_n mask[n] · log softmax(logits[n])[labels[n]], N = Σ mask.

    log softmax(z)_k = z_k - log Σ_j exp(z_j), computed after subtracting max(z) so
    that exp never overflows.
    """
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - jnp.log(jnp.exp(shifted).sum(axis=-1, keepdims=True))
    picked = jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
    return -(picked * mask).sum() / mask.sum()


def softmax_cross_entropy_backward(
    logits: jax.Array, labels: jax.Array, mask: jax.Array
) -> jax.Array:
    """dL/dlogits = mask · (softmax(logits) - one_hot(labels)) / N."""
    probs = jax.nn.softmax(logits, axis=-1)
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return (probs - one_hot) * mask[:, None] / mask.sum()


# ----------------------------------------------------------------------------- the chain


def forward(params: PyTree, images: jax.Array) -> dict[str, jax.Array]:
    """Run the tutorial's CNN on float NHWC ``images``, keeping every intermediate value."""
    acts = {"input": images}
    x = images
    for block in ("conv1", "conv2"):
        layer = params[block]["conv"]
        acts[f"{block}/conv"] = conv2d(x, layer["kernel"], layer["bias"])
        acts[f"{block}/relu"] = relu(acts[f"{block}/conv"])
        acts[f"{block}/pool"] = x = max_pool(acts[f"{block}/relu"])
    acts["flatten"] = flatten(x)
    acts["logits"] = dense(acts["flatten"], params["out"]["kernel"], params["out"]["bias"])
    return acts


def backward(
    params: PyTree, acts: dict[str, jax.Array], labels: jax.Array, mask: jax.Array
) -> tuple[PyTree, dict[str, jax.Array]]:
    """Chain the layers' backward passes from the loss down to the first convolution.

    Returns:
        The gradient, shaped like ``params``, and the gradient of the loss with respect
        to every intermediate value (keyed like ``acts``).
    """
    d = {"logits": softmax_cross_entropy_backward(acts["logits"], labels, mask)}
    dx, dw, db = dense_backward(acts["flatten"], params["out"]["kernel"], d["logits"])
    grads = {"out": {"kernel": dw, "bias": db}}
    d["flatten"] = dx
    d["conv2/pool"] = flatten_backward(acts["conv2/pool"].shape, dx)
    inputs = {"conv2": acts["conv1/pool"], "conv1": acts["input"]}
    for block in ("conv2", "conv1"):
        d[f"{block}/relu"] = max_pool_backward(acts[f"{block}/relu"], d[f"{block}/pool"])
        d[f"{block}/conv"] = relu_backward(acts[f"{block}/conv"], d[f"{block}/relu"])
        dx, dw, db = conv2d_backward(
            inputs[block], params[block]["conv"]["kernel"], d[f"{block}/conv"]
        )
        grads[block] = {"conv": {"kernel": dw, "bias": db}}
        if block == "conv2":
            d["conv1/pool"] = dx
    return grads, d


def loss_and_grad(
    params: PyTree, images: jax.Array, labels: jax.Array, mask: jax.Array
) -> tuple[jax.Array, PyTree]:
    """Return the loss and its gradient, by hand: what ``loss.backward()`` computes."""
    acts = forward(params, images)
    grads, _ = backward(params, acts, labels, mask)
    return softmax_cross_entropy(acts["logits"], labels, mask), grads


# ----------------------------------------------------------------------------- Adam


@dataclasses.dataclass(frozen=True)
class AdamState:
    """Adam's memory: the step count t and the moving averages m (of g) and v (of g²)."""

    count: int
    mu: PyTree
    nu: PyTree


def adam_init(params: PyTree) -> AdamState:
    """Start with t = 0 and both moments 0."""
    zeros = jax.tree.map(jnp.zeros_like, params)
    return AdamState(count=0, mu=zeros, nu=zeros)


def adam_step(
    grads: PyTree,
    state: AdamState,
    params: PyTree,
    learning_rate: float,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> tuple[PyTree, AdamState]:
    """One Adam step, as ``optax.adam`` computes it (``optimizer.step()``).

    t = t + 1
    m = b1 · m + (1 - b1) · g                  first moment
    v = b2 · v + (1 - b2) · g²                 second moment
    m̂ = m / (1 - b1ᵗ),  v̂ = v / (1 - b2ᵗ)       bias correction (both start at 0)
    p = p - lr · m̂ / (√v̂ + eps)                eps outside the square root, as optax
                                               (its eps_root, inside, defaults to 0)
    """
    t = state.count + 1
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, grads)
    correction1, correction2 = 1 - b1**t, 1 - b2**t

    def update(p: jax.Array, m: jax.Array, v: jax.Array) -> jax.Array:
        return p - learning_rate * (m / correction1) / (jnp.sqrt(v / correction2) + eps)

    return jax.tree.map(update, params, mu, nu), AdamState(count=t, mu=mu, nu=nu)


# ----------------------------------------------------------------------------- checks


@dataclasses.dataclass(frozen=True)
class Check:
    """One stage of the walk: what it computes and how far it is from the reference."""

    stage: str
    computes: str
    shape: tuple[int, ...]
    max_abs: float
    max_relative: float

    @property
    def ok(self) -> bool:
        """Whether the difference is within :data:`TOLERANCE`."""
        return self.max_relative <= TOLERANCE


def _check(stage: str, computes: str, mine: PyTree, reference: PyTree) -> Check:
    """Compare ``mine`` with ``reference`` over all leaves, relative to the reference."""
    ours, theirs = jax.tree.leaves(mine), jax.tree.leaves(reference)
    max_abs = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(ours, theirs, strict=True))
    scale = max(float(jnp.max(jnp.abs(b))) for b in theirs)
    shape = tuple(ours[0].shape) if len(ours) == 1 else (sum(a.size for a in ours),)
    return Check(stage, computes, shape, max_abs, max_abs / scale if scale else max_abs)


def _vjp(function: Callable[..., jax.Array], *inputs: jax.Array) -> Callable[..., tuple]:
    """Return autodiff's backward function of ``function`` at ``inputs``."""
    return jax.vjp(function, *inputs)[1]


def walk_step(state: TrainState, batch: Batch, learning_rate: float) -> tuple[list[Check], PyTree]:
    """Take one training step by hand and check every stage against JAX and optax.

    Returns:
        The checks, in the order the step computes them, and the hand-updated params.
    """
    params = state.params
    images = to_float_images(batch["image"])
    labels, mask = jnp.asarray(batch["label"]), jnp.asarray(batch["mask"])
    acts = forward(params, images)
    _, flax_acts = state.apply_fn(
        {"params": params}, images, capture_intermediates=True, mutable=["intermediates"]
    )
    flax = flax_acts["intermediates"]
    checks = []
    for block in ("conv1", "conv2"):
        checks += [
            _check(
                f"{block} conv",
                "cross-correlation + bias",
                acts[f"{block}/conv"],
                flax[block]["conv"]["__call__"][0],
            ),
            _check(
                f"{block} relu+pool",
                "max(x, 0), then 2x2 max",
                acts[f"{block}/pool"],
                flax[block]["__call__"][0],
            ),
        ]
    checks.append(
        _check("out dense", "x . w + b = logits", acts["logits"], flax["out"]["__call__"][0])
    )
    loss = softmax_cross_entropy(acts["logits"], labels, mask)
    reference_loss = masked_cross_entropy(acts["logits"], labels, mask)
    checks.append(_check("loss", "mean -log softmax[label]", loss, reference_loss))

    grads, d = backward(params, acts, labels, mask)
    ce = _vjp(lambda z: masked_cross_entropy(z, labels, mask), acts["logits"])
    checks.append(
        _check("d loss/d logits", "(softmax - one_hot) / N", d["logits"], ce(jnp.ones(()))[0])
    )
    out = params["out"]
    dense_ref = _vjp(dense, acts["flatten"], out["kernel"], out["bias"])(d["logits"])
    checks.append(
        _check("out backward", "dx = dy.wT, dw = xT.dy, db = sum dy",
               dense_backward(acts["flatten"], out["kernel"], d["logits"]), dense_ref)
    )  # fmt: skip
    for block, below in (("conv2", "conv1/pool"), ("conv1", "input")):
        pool_ref = _vjp(cpu_forms.max_pool_2x2, acts[f"{block}/relu"])(d[f"{block}/pool"])[0]
        checks.append(
            _check(f"{block} pool backward", "gradient to each window's max",
                   d[f"{block}/relu"], pool_ref)
        )  # fmt: skip
        relu_ref = _vjp(jax.nn.relu, acts[f"{block}/conv"])(d[f"{block}/relu"])[0]
        checks.append(
            _check(f"{block} relu backward", "dy where x > 0", d[f"{block}/conv"], relu_ref)
        )
        layer = params[block]["conv"]
        conv_ref = _vjp(
            lambda x, w, b: _reference_conv(x, w) + b, acts[below], layer["kernel"], layer["bias"]
        )(d[f"{block}/conv"])
        checks.append(
            _check(f"{block} conv backward", "dx = dy * flip(w), dw = x * dy, db = sum dy",
                   conv2d_backward(acts[below], layer["kernel"], d[f"{block}/conv"]), conv_ref)
        )  # fmt: skip
    _, autodiff = loss_and_gradients(state, batch)
    checks.append(_check("gradient", "all of the above, chained", grads, autodiff))

    # Adam on autodiff's gradient, so that this stage checks Adam's arithmetic alone: at
    # t = 1 the update is about lr · sign(g), which magnifies any difference in a tiny g.
    hand_params, _ = adam_step(autodiff, adam_init(params), params, learning_rate)
    tx = optax.adam(learning_rate)
    updates, _ = tx.update(autodiff, tx.init(params), params)
    checks.append(
        _check("adam step", "p - lr.m^/(sqrt(v^)+eps)", hand_params,
               optax.apply_updates(params, updates))
    )  # fmt: skip
    return checks, hand_params


def _reference_conv(x: jax.Array, w: jax.Array) -> jax.Array:
    """XLA's convolution, 'same' padding, stride 1: the reference for :func:`conv2d`."""
    return jax.lax.conv_general_dilated(
        x, w, window_strides=(1, 1), padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def format_checks(checks: Sequence[Check]) -> str:
    """Return the checks as a table: stage, formula, shape, differences, verdict."""
    width = max(len(c.stage) for c in checks)
    formula = max(len(c.computes) for c in checks)
    lines = [
        f"{'stage':<{width}}  {'computes':<{formula}}  {'shape':<16} {'max |diff|':>10} "
        f"{'relative':>9}"
    ]
    for c in checks:
        lines.append(
            f"{c.stage:<{width}}  {c.computes:<{formula}}  {c.shape!s:<16} {c.max_abs:>10.2e} "
            f"{c.max_relative:>9.2e}  {'ok' if c.ok else 'DIFFERS'}"
        )
    return "\n".join(lines)
