"""Binding a mesh axis name to a size-1 axis, for updates that see whole leaves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["with_unit_axis"]


def with_unit_axis(fn: Callable[..., Any], axis_name: str) -> Callable[..., Any]:
    """Runs ``fn`` with ``axis_name`` bound to a size-1 ``vmap`` axis.

    Collectives over ``axis_name`` inside ``fn`` (the ``psum`` of a transform built with
    ``axis_name``) then act on one copy, i.e. are identities: right when ``fn`` sees whole
    leaves, as in plain data parallelism or a GSPMD program.

    Args:
        fn: a function of pytrees of arrays (``None`` leaves allowed).
        axis_name: the axis name to bind.

    Returns:
        A function with the same signature and results.

    Example:
        >>> import jax.numpy as jnp, scirs2_optim_jax as so
        >>> tx = so.clip_by_global_norm(1.0, axis_name="data")
        >>> g = {"w": jnp.array([3.0, 4.0])}
        >>> out, _ = with_unit_axis(tx.update, "data")(g, tx.init(g))
        >>> out["w"].tolist()
        [0.6000000238418579, 0.800000011920929]
    """

    def wrapped(*args: Any) -> Any:
        expanded = jax.tree.map(lambda x: jnp.asarray(x)[None], args)
        out = jax.vmap(fn, axis_name=axis_name, axis_size=1)(*expanded)
        return jax.tree.map(lambda x: x[0], out)

    return wrapped
