"""Soak: 5,000 small jitted steps with metrics exported every step (health, Prometheus served
over HTTP and scraped, guard counters) leave no growing number of live device arrays and keep
the resident memory within 5%."""

from __future__ import annotations

import gc
import urllib.request
from typing import Any

import jax
import jax.numpy as jnp
import optax
import psutil

import scirs2_optim_jax as so
from scirs2_optim_jax.monitor import MonitorConfig, RunMonitor, step_metrics
from scirs2_optim_jax.resilience import skip_non_finite

WARMUP_STEPS = 500
SOAK_STEPS = 5_000


def _snapshot() -> tuple[int, int]:
    gc.collect()
    return len(jax.live_arrays()), psutil.Process().memory_info().rss


def test_soak_5000_steps_no_growth_of_live_arrays_or_resident_memory(
    record_property: Any,
) -> None:
    tx = skip_non_finite(so.adamw(1e-3))
    key_w, key_x = jax.random.split(jax.random.key(0))
    params = {"w": 0.1 * jax.random.normal(key_w, (32, 16)), "b": jnp.zeros(16)}
    x = jax.random.normal(key_x, (64, 32))
    poisoned = x.at[0, 0].set(jnp.nan)
    state = tx.init(params)

    @jax.jit
    def train_step(params: dict, state: Any, x: jax.Array) -> tuple[dict, Any, dict]:
        def loss_fn(p: dict) -> jax.Array:
            return jnp.mean((x @ p["w"] + p["b"]) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params)
        new_params = optax.apply_updates(params, updates)
        metrics = step_metrics(
            loss, grads, updates, new_params, opt_state=state, learning_rate=1e-3, per_layer=True
        )
        return new_params, state, metrics

    config = MonitorConfig(port=0, log_every=0, health_every=50)
    with RunMonitor(config, batch_size=64, configure_logs=False) as monitor:

        def run(start: int, steps: int) -> None:
            nonlocal params, state
            for step in range(start, start + steps):
                batch = poisoned if step % 1000 == 999 else x
                params, state, metrics = train_step(params, state, batch)
                monitor.record(step, metrics)
                if step % 1000 == 0:
                    with urllib.request.urlopen(monitor.url + "/metrics", timeout=10) as r:
                        assert b"scirs2_loss" in r.read()

        run(0, WARMUP_STEPS)
        monitor.flush()
        arrays_before, rss_before = _snapshot()
        run(WARMUP_STEPS, SOAK_STEPS)
        monitor.flush()
        arrays_after, rss_after = _snapshot()
        registry = monitor.exporter.registry
        assert registry.get_sample_value("scirs2_steps_total") == WARMUP_STEPS + SOAK_STEPS
        assert registry.get_sample_value("scirs2_skipped_steps_total") == 5

    growth = (rss_after - rss_before) / rss_before
    record_property("live_arrays_before", arrays_before)
    record_property("live_arrays_after", arrays_after)
    record_property("rss_before_mib", round(rss_before / 2**20, 1))
    record_property("rss_after_mib", round(rss_after / 2**20, 1))
    record_property("rss_growth_percent", round(100 * growth, 3))
    print(
        f"soak: live arrays {arrays_before} -> {arrays_after}; resident memory "
        f"{rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB ({100 * growth:+.2f}%)"
    )
    assert arrays_after <= arrays_before
    assert growth < 0.05, f"resident memory grew by {growth:.1%}"
    for leaf in jax.tree.leaves(params):
        assert bool(jnp.all(jnp.isfinite(leaf)))
    assert float(jnp.sum(jnp.abs(params["b"]))) > 0  # it trained
