"""Adaptive-moment transforms: Adam, RAdam, RMS (RMSprop), centred RMS and RSS (Adagrad).

Each factory validates its hyperparameters, then returns an ``optax.GradientTransformation``
whose state is a NamedTuple of arrays. Moments may be stored in a narrower or wider dtype
than the parameters (``mu_dtype``, ``nu_dtype``); the arithmetic runs in the wider of the
moment and gradient dtypes, and the update comes back in the gradient's dtype.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from scirs2_optim_jax import validation as v
from scirs2_optim_jax.transforms.description import ScaleByAdam, describe
from scirs2_optim_jax.transforms.moments import (
    as_dtype,
    as_inexact_tree,
    cast,
    compute_dtype,
    ema,
    full_like_tree,
    safe_increment,
    zeros_like_tree,
)
from scirs2_optim_jax.transforms.moments import bias_correction as correction_factor

__all__ = [
    "ScaleByAdamState",
    "ScaleByRStdDevState",
    "ScaleByRStdDevWithCountState",
    "ScaleByRmsState",
    "ScaleByRmsWithCountState",
    "ScaleByRssState",
    "ScaleByStddevState",
    "ScaleByStddevWithCountState",
    "scale_by_adam",
    "scale_by_radam",
    "scale_by_rms",
    "scale_by_rss",
    "scale_by_stddev",
]


def _check_betas(fn: str, **betas: Any) -> None:
    for name, value in betas.items():
        v.check_in_range(fn, name, value, 0.0, 1.0)


class ScaleByAdamState(NamedTuple):
    """State of :func:`scale_by_adam` and :func:`scale_by_radam`."""

    count: jax.Array  # int32 scalar: steps taken
    mu: optax.Updates  # first moment
    nu: optax.Updates  # second moment


def _adam_moments(
    fn: str,
    updates: optax.Updates,
    state: ScaleByAdamState,
    b1: Any,
    b2: Any,
    nesterov: bool,
) -> tuple[jax.Array, Any, Any, Any, Any]:
    """New count, moments and bias-corrected moments shared by Adam and RAdam."""
    v.check_tree_matches(fn, updates, state.mu)
    mu = jax.tree.map(lambda g, m: ema(g, m, b1, 1), updates, state.mu)
    nu = jax.tree.map(lambda g, n: ema(g, n, b2, 2), updates, state.nu)
    count = safe_increment(state.count)
    correction1 = correction_factor(b1, count)
    correction2 = correction_factor(b2, count)

    def first_moment_hat(g: jax.Array, m: jax.Array) -> jax.Array:
        dtype = compute_dtype(g.dtype, m.dtype)
        m_hat = m.astype(dtype) / correction1.astype(dtype)
        if not nesterov:
            return m_hat
        # Nesterov: look one step ahead with the next step's bias correction (Dozat, 2016).
        next_correction = correction_factor(b1, safe_increment(count)).astype(dtype)
        ahead = m.astype(dtype) / next_correction
        return as_dtype(b1, dtype) * ahead + as_dtype(1 - b1, dtype) * (
            g.astype(dtype) / correction1.astype(dtype)
        )

    mu_hat = jax.tree.map(first_moment_hat, updates, mu)
    nu_hat = jax.tree.map(lambda n: n / correction2.astype(n.dtype), nu)
    return count, mu, nu, mu_hat, nu_hat


def scale_by_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    nu_dtype: Any = None,
) -> optax.GradientTransformation:
    """Rescales updates by Adam's bias-corrected moment estimates.

    ``update = mu_hat / (sqrt(nu_hat + eps_root) + eps)`` with ``mu``, ``nu`` exponential
    moving averages of the gradient and its square.

    Args:
        b1: decay of the first moment, in [0, 1).
        b2: decay of the second moment, in [0, 1).
        eps: added to the denominator outside the square root, > 0.
        eps_root: added inside the square root, >= 0.
        mu_dtype: dtype of the first moment (default: the parameters' dtype); floating or
            complex.
        nesterov: use Nesterov momentum (NAdam).
        nu_dtype: dtype of the second moment (default: the parameters' dtype).

    Returns:
        An ``optax.GradientTransformation`` with state :class:`ScaleByAdamState`.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = scale_by_adam()
        >>> params = {"w": jnp.ones(3)}
        >>> updates, state = tx.update({"w": jnp.full(3, 2.0)}, tx.init(params))
        >>> [round(float(x), 4) for x in updates["w"]]
        [1.0, 1.0, 1.0]

    Reference: Kingma and Ba, "Adam: A Method for Stochastic Optimization", 2014.
    """
    fn = "scale_by_adam"
    _check_betas(fn, b1=b1, b2=b2)
    v.check_positive(fn, "eps", eps)
    v.check_non_negative(fn, "eps_root", eps_root)
    v.check_bool(fn, "nesterov", nesterov)
    mu_dtype = v.check_dtype(fn, "mu_dtype", mu_dtype, allow_complex=True)
    nu_dtype = v.check_dtype(fn, "nu_dtype", nu_dtype)

    def init_fn(params: optax.Params) -> ScaleByAdamState:
        return ScaleByAdamState(
            count=jnp.zeros([], jnp.int32),
            mu=zeros_like_tree(params, mu_dtype),
            nu=zeros_like_tree(params, nu_dtype),
        )

    def update_fn(
        updates: optax.Updates, state: ScaleByAdamState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ScaleByAdamState]:
        del params
        updates = as_inexact_tree(updates)
        count, mu, nu, mu_hat, nu_hat = _adam_moments(fn, updates, state, b1, b2, nesterov)

        def direction(g: jax.Array, m: jax.Array, n: jax.Array) -> jax.Array:
            dtype = compute_dtype(m.dtype, n.dtype)
            denom = jnp.sqrt(n.astype(dtype) + as_dtype(eps_root, dtype)) + as_dtype(eps, dtype)
            return cast(m.astype(dtype) / denom, g.dtype)

        new_updates = jax.tree.map(direction, updates, mu_hat, nu_hat)
        return new_updates, ScaleByAdamState(count=count, mu=mu, nu=nu)

    return describe(
        optax.GradientTransformation(init_fn, update_fn),
        ScaleByAdam(b1, b2, eps, eps_root, nesterov),
    )


def scale_by_radam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    threshold: float = 5.0,
    *,
    nesterov: bool = False,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> optax.GradientTransformation:
    """Rescales updates by Rectified Adam: plain momentum until the variance is tractable.

    While the length of the approximated simple moving average ``rho_t`` is below
    ``threshold`` the update is the bias-corrected first moment; after that it is the Adam
    direction times the rectification term ``r_t``.

    Args:
        b1: decay of the first moment, in [0, 1).
        b2: decay of the second moment, in [0, 1).
        eps: added to the denominator outside the square root, > 0.
        eps_root: added inside the square root, >= 0.
        threshold: the ``rho_t`` above which the adaptive step is used, > 0.
        nesterov: use Nesterov momentum.
        mu_dtype: dtype of the first moment (default: the parameters' dtype).
        nu_dtype: dtype of the second moment (default: the parameters' dtype).

    Returns:
        An ``optax.GradientTransformation`` with state :class:`ScaleByAdamState`.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = scale_by_radam()
        >>> updates, _ = tx.update({"w": jnp.full(2, 3.0)}, tx.init({"w": jnp.zeros(2)}))
        >>> [round(float(x), 4) for x in updates["w"]]  # first steps: momentum only
        [3.0, 3.0]

    Reference: Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond", 2020.
    """
    fn = "scale_by_radam"
    _check_betas(fn, b1=b1, b2=b2)
    v.check_positive(fn, "eps", eps)
    v.check_non_negative(fn, "eps_root", eps_root)
    v.check_positive(fn, "threshold", threshold)
    v.check_bool(fn, "nesterov", nesterov)
    mu_dtype = v.check_dtype(fn, "mu_dtype", mu_dtype, allow_complex=True)
    nu_dtype = v.check_dtype(fn, "nu_dtype", nu_dtype)
    rho_inf = 2.0 / (1.0 - b2) - 1.0

    def init_fn(params: optax.Params) -> ScaleByAdamState:
        return ScaleByAdamState(
            count=jnp.zeros([], jnp.int32),
            mu=zeros_like_tree(params, mu_dtype),
            nu=zeros_like_tree(params, nu_dtype),
        )

    def update_fn(
        updates: optax.Updates, state: ScaleByAdamState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ScaleByAdamState]:
        del params
        updates = as_inexact_tree(updates)
        count, mu, nu, mu_hat, nu_hat = _adam_moments(fn, updates, state, b1, b2, nesterov)
        b2_t = jnp.asarray(b2, jnp.float32) ** count.astype(jnp.float32)
        rho = rho_inf - 2 * count.astype(jnp.float32) * b2_t / (1 - b2_t)
        rectifier = jnp.sqrt(
            (rho - 4.0) * (rho - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho)
        )
        adaptive = rho >= threshold

        def direction(g: jax.Array, m: jax.Array, n: jax.Array) -> jax.Array:
            dtype = compute_dtype(m.dtype, n.dtype)
            m = m.astype(dtype)
            denom = jnp.sqrt(n.astype(dtype) + as_dtype(eps_root, dtype)) + as_dtype(eps, dtype)
            step = jnp.where(adaptive, rectifier.astype(dtype) * m / denom, m)
            return cast(step, g.dtype)

        new_updates = jax.tree.map(direction, updates, mu_hat, nu_hat)
        return new_updates, ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


class ScaleByRmsState(NamedTuple):
    """State of :func:`scale_by_rms` without bias correction."""

    nu: optax.Updates


class ScaleByRmsWithCountState(NamedTuple):
    """State of :func:`scale_by_rms` with bias correction."""

    count: jax.Array
    nu: optax.Updates


def _inverse_rms(n: jax.Array, eps: Any, eps_in_sqrt: bool) -> jax.Array:
    if eps_in_sqrt:
        return jax.lax.rsqrt(n + as_dtype(eps, n.dtype))
    return 1 / (jnp.sqrt(n) + as_dtype(eps, n.dtype))


def scale_by_rms(
    decay: float = 0.9,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
    *,
    nu_dtype: Any = None,
) -> optax.GradientTransformation:
    """Divides updates by the root mean square of past gradients (RMSprop).

    Args:
        decay: decay of the squared-gradient average, in [0, 1).
        eps: added to the mean square (``eps_in_sqrt``) or to its root, > 0.
        initial_scale: initial value of the mean square, >= 0.
        eps_in_sqrt: whether ``eps`` goes inside the square root.
        bias_correction: divide the average by ``1 - decay**t``.
        nu_dtype: dtype of the mean square (default: the parameters' dtype).

    Returns:
        An ``optax.GradientTransformation``.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = scale_by_rms(decay=0.0, eps=1e-12)
        >>> updates, _ = tx.update({"w": jnp.array([-2.0])}, tx.init({"w": jnp.zeros(1)}))
        >>> round(float(updates["w"][0]), 4)
        -1.0

    Reference: Hinton, Lecture 6.5 of "Neural Networks for Machine Learning", 2012.
    """
    fn = "scale_by_rms"
    v.check_in_range(fn, "decay", decay, 0.0, 1.0)
    v.check_positive(fn, "eps", eps)
    v.check_non_negative(fn, "initial_scale", initial_scale)
    v.check_bool(fn, "eps_in_sqrt", eps_in_sqrt)
    v.check_bool(fn, "bias_correction", bias_correction)
    nu_dtype = v.check_dtype(fn, "nu_dtype", nu_dtype)
    use_correction = bias_correction

    def init_fn(params: optax.Params) -> ScaleByRmsState | ScaleByRmsWithCountState:
        nu = full_like_tree(params, initial_scale, nu_dtype)
        if use_correction:
            return ScaleByRmsWithCountState(count=jnp.zeros([], jnp.int32), nu=nu)
        return ScaleByRmsState(nu=nu)

    def update_fn(
        updates: optax.Updates,
        state: ScaleByRmsState | ScaleByRmsWithCountState,
        params: optax.Params | None = None,
    ) -> tuple[optax.Updates, ScaleByRmsState | ScaleByRmsWithCountState]:
        del params
        updates = as_inexact_tree(updates)
        v.check_tree_matches(fn, updates, state.nu)
        nu = jax.tree.map(lambda g, n: ema(g, n, decay, 2), updates, state.nu)
        if use_correction:
            count = safe_increment(state.count)
            correction = correction_factor(decay, count)
            nu_hat = jax.tree.map(lambda n: n / correction.astype(n.dtype), nu)
        else:
            nu_hat = nu

        def scale(g: jax.Array, n: jax.Array) -> jax.Array:
            dtype = compute_dtype(g.dtype, n.dtype)
            return (_inverse_rms(n.astype(dtype), eps, eps_in_sqrt) * g.astype(dtype)).astype(
                g.dtype
            )

        new_updates = jax.tree.map(scale, updates, nu_hat)
        if use_correction:
            return new_updates, ScaleByRmsWithCountState(count=count, nu=nu)
        return new_updates, ScaleByRmsState(nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


class ScaleByRStdDevState(NamedTuple):
    """State of :func:`scale_by_stddev` without bias correction (named as in optax)."""

    mu: optax.Updates
    nu: optax.Updates


class ScaleByRStdDevWithCountState(NamedTuple):
    """State of :func:`scale_by_stddev` with bias correction (named as in optax)."""

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


# The earlier names of the same classes.
ScaleByStddevState = ScaleByRStdDevState
ScaleByStddevWithCountState = ScaleByRStdDevWithCountState


def scale_by_stddev(
    decay: float = 0.9,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
    *,
    nu_dtype: Any = None,
) -> optax.GradientTransformation:
    """Divides updates by the running standard deviation of the gradient (centred RMSprop).

    Args:
        decay: decay of the moving averages, in [0, 1).
        eps: stabilising term, > 0.
        initial_scale: initial value of the mean square, >= 0.
        eps_in_sqrt: whether ``eps`` goes inside the square root.
        bias_correction: divide the averages by ``1 - decay**t``.
        nu_dtype: dtype of the averages (default: the parameters' dtype).

    Returns:
        An ``optax.GradientTransformation``.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = scale_by_stddev(decay=0.5, eps=1e-12)
        >>> updates, _ = tx.update({"w": jnp.array([2.0])}, tx.init({"w": jnp.zeros(1)}))
        >>> round(float(updates["w"][0]), 4)
        2.0

    Reference: Graves, "Generating Sequences With Recurrent Neural Networks", 2013.
    """
    fn = "scale_by_stddev"
    v.check_in_range(fn, "decay", decay, 0.0, 1.0)
    v.check_positive(fn, "eps", eps)
    v.check_non_negative(fn, "initial_scale", initial_scale)
    v.check_bool(fn, "eps_in_sqrt", eps_in_sqrt)
    v.check_bool(fn, "bias_correction", bias_correction)
    nu_dtype = v.check_dtype(fn, "nu_dtype", nu_dtype)
    use_correction = bias_correction

    def init_fn(params: optax.Params) -> ScaleByRStdDevState | ScaleByRStdDevWithCountState:
        mu = zeros_like_tree(params, nu_dtype)
        nu = full_like_tree(params, initial_scale, nu_dtype)
        if use_correction:
            return ScaleByRStdDevWithCountState(count=jnp.zeros([], jnp.int32), mu=mu, nu=nu)
        return ScaleByRStdDevState(mu=mu, nu=nu)

    def update_fn(
        updates: optax.Updates,
        state: ScaleByRStdDevState | ScaleByRStdDevWithCountState,
        params: optax.Params | None = None,
    ) -> tuple[optax.Updates, ScaleByRStdDevState | ScaleByRStdDevWithCountState]:
        del params
        updates = as_inexact_tree(updates)
        v.check_tree_matches(fn, updates, state.nu)
        mu = jax.tree.map(lambda g, m: ema(g, m, decay, 1), updates, state.mu)
        nu = jax.tree.map(lambda g, n: ema(g, n, decay, 2), updates, state.nu)
        if use_correction:
            count = safe_increment(state.count)
            correction = correction_factor(decay, count)
            mu_hat = jax.tree.map(lambda m: m / correction.astype(m.dtype), mu)
            nu_hat = jax.tree.map(lambda n: n / correction.astype(n.dtype), nu)
        else:
            mu_hat, nu_hat = mu, nu

        def scale(g: jax.Array, m: jax.Array, n: jax.Array) -> jax.Array:
            dtype = compute_dtype(g.dtype, n.dtype)
            m = m.astype(dtype)
            variance = n.astype(dtype) - m * m
            return (_inverse_rms(variance, eps, eps_in_sqrt) * g.astype(dtype)).astype(g.dtype)

        new_updates = jax.tree.map(scale, updates, mu_hat, nu_hat)
        if use_correction:
            return new_updates, ScaleByRStdDevWithCountState(count=count, mu=mu, nu=nu)
        return new_updates, ScaleByRStdDevState(mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


class ScaleByRssState(NamedTuple):
    """State of :func:`scale_by_rss`."""

    sum_of_squares: optax.Updates


def scale_by_rss(
    initial_accumulator_value: float = 0.1,
    eps: float = 1e-7,
    *,
    accumulator_dtype: Any = None,
) -> optax.GradientTransformation:
    """Divides updates by the root of the sum of all past squared gradients (Adagrad).

    Args:
        initial_accumulator_value: starting value of the sum, >= 0.
        eps: added inside the square root, >= 0.
        accumulator_dtype: dtype of the sum (default: the parameters' dtype).

    Returns:
        An ``optax.GradientTransformation`` with state :class:`ScaleByRssState`.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = scale_by_rss(initial_accumulator_value=0.0, eps=0.0)
        >>> updates, _ = tx.update({"w": jnp.array([-4.0])}, tx.init({"w": jnp.zeros(1)}))
        >>> float(updates["w"][0])
        -1.0

    Reference: Duchi et al., "Adaptive Subgradient Methods for Online Learning", 2011.
    """
    fn = "scale_by_rss"
    v.check_non_negative(fn, "initial_accumulator_value", initial_accumulator_value)
    v.check_non_negative(fn, "eps", eps)
    accumulator_dtype = v.check_dtype(fn, "accumulator_dtype", accumulator_dtype)

    def init_fn(params: optax.Params) -> ScaleByRssState:
        return ScaleByRssState(
            sum_of_squares=full_like_tree(params, initial_accumulator_value, accumulator_dtype)
        )

    def update_fn(
        updates: optax.Updates, state: ScaleByRssState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ScaleByRssState]:
        del params
        updates = as_inexact_tree(updates)
        v.check_tree_matches(fn, updates, state.sum_of_squares)

        def accumulate(g: jax.Array, s: jax.Array) -> jax.Array:
            dtype = compute_dtype(g.dtype, s.dtype)
            g = g.astype(dtype)
            return (jnp.real(g * jnp.conj(g)) + s.astype(dtype)).astype(s.dtype)

        sum_of_squares = jax.tree.map(accumulate, updates, state.sum_of_squares)

        def scale(g: jax.Array, s: jax.Array) -> jax.Array:
            dtype = compute_dtype(g.dtype, s.dtype)
            s = s.astype(dtype)
            inv = jnp.where(s > 0, jax.lax.rsqrt(s + as_dtype(eps, dtype)), 0.0)
            return (inv * g.astype(dtype)).astype(g.dtype)

        new_updates = jax.tree.map(scale, updates, sum_of_squares)
        return new_updates, ScaleByRssState(sum_of_squares=sum_of_squares)

    return optax.GradientTransformation(init_fn, update_fn)
